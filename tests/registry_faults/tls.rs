//! TLS faults: a certificate from an unknown CA, and a CA file that fixes it.

use super::*;

/// `openssl s_server` with a certificate from a throwaway CA; killed on drop.
struct TlsServer {
    child: std::process::Child,
    host: String,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn tls_server() -> Option<TlsServer> {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no openssl binary");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=tplbuild test CA",
        ],
        d,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        d,
    );
    fs_err::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.crt",
            "-days",
            "1",
            "-extfile",
            "ext",
        ],
        d,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let child = std::process::Command::new("openssl")
        .args([
            "s_server", "-quiet", "-www", "-accept", &host, "-cert", "leaf.crt", "-key", "leaf.key",
        ])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = TlsServer {
        child,
        host,
        ca: d.join("ca.crt"),
        _dir: dir,
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&server.host).await.is_ok() {
            return Some(server);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("openssl s_server did not start");
}

#[tokio::test]
async fn untrusted_certificate_is_a_clear_error_and_a_ca_file_fixes_it() {
    let Some(server) = tls_server().await else {
        return;
    };
    let r = Reference::parse(&format!("{}/a/b:1", server.host)).unwrap();
    let client =
        Client::with_credentials(RegistrySettings::default(), CredentialSource::None).unwrap();
    let err = client.get_manifest(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::Certificate { .. }), "{err:?}");
    assert!(err.to_string().contains("not trusted"), "{err}");

    let settings = RegistrySettings {
        ca_files: vec![server.ca.clone()],
        ..RegistrySettings::default()
    };
    let client = Client::with_credentials(settings, CredentialSource::None).unwrap();
    // s_server answers with an HTML page: not a registry, but TLS worked.
    match client.get_manifest(&r).await {
        Err(RegistryError::Certificate { .. }) => panic!("the CA file was not used"),
        Err(e) => panic!("unexpected {e:?}"),
        Ok(m) => assert!(m.media_type.starts_with("text/html"), "{m:?}"),
    }
}
