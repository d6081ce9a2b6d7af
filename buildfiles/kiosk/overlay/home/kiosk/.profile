# Read by sh for the kiosk user's logins.
export LESSSECURE=1
