//! Push faults (upload sessions, mounts, retries) and pull mirrors.

use super::*;

fn upload_server(mount: Option<u16>, put_failures: usize) -> impl Fn(&Req) -> Action + Send + Sync {
    let puts = AtomicUsize::new(0);
    move |r| match (r.method.as_str(), r.path.as_str()) {
        ("HEAD", _) => status(404),
        ("POST", p) if p.contains("mount=") => match mount {
            Some(201) => status(201),
            _ => Action::Respond(
                202,
                vec![("Location", "/upload/m?state=s".into())],
                Vec::new(),
            ),
        },
        ("POST", _) => Action::Respond(
            202,
            vec![("Location", "/upload/1?state=s".into())],
            Vec::new(),
        ),
        ("PUT", p) if p.starts_with("/upload/") => {
            if puts.fetch_add(1, Ordering::SeqCst) < put_failures {
                status(503)
            } else {
                status(201)
            }
        }
        _ => status(400),
    }
}

async fn push(
    fake: &Fake,
    data: &[u8],
    mount_from: Option<&str>,
) -> Result<PushOutcome, RegistryError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    fs_err::write(&path, data).unwrap();
    let d = Descriptor::new(
        MediaType::OCI_LAYER_GZIP,
        Digest::of(data),
        data.len() as u64,
    );
    let from = mount_from.map(|m| fake.reference(m));
    fake.client()
        .push_blob_file(&fake.reference("a/b"), &d, &path, from.as_ref())
        .await
}

#[tokio::test]
async fn upload_streams_the_file_to_the_location_with_the_digest() {
    let (data, d) = blob(300_000);
    let fake = Fake::start(upload_server(None, 0)).await;
    assert_eq!(
        push(&fake, &data, None).await.unwrap(),
        PushOutcome::Uploaded
    );
    let put = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(
        put.path,
        format!(
            "/upload/1?state=s&digest={}",
            d.digest.to_string().replace(':', "%3A")
        )
    );
    assert_eq!(put.body, data);
}

#[tokio::test]
async fn mount_refused_with_202_continues_with_the_session_it_opened() {
    let (data, _) = blob(1000);
    let fake = Fake::start(upload_server(Some(202), 0)).await;
    assert_eq!(
        push(&fake, &data, Some("other/repo")).await.unwrap(),
        PushOutcome::Uploaded
    );
    let reqs = fake.requests();
    assert_eq!(reqs.iter().filter(|r| r.method == "POST").count(), 1);
    assert!(reqs
        .iter()
        .any(|r| r.method == "PUT" && r.path.starts_with("/upload/m")));
}

#[tokio::test]
async fn mount_accepted_with_201_uploads_nothing() {
    let (data, _) = blob(1000);
    let fake = Fake::start(upload_server(Some(201), 0)).await;
    assert_eq!(
        push(&fake, &data, Some("other/repo")).await.unwrap(),
        PushOutcome::Mounted
    );
    assert_eq!(fake.count("PUT", "/"), 0);
}

#[tokio::test]
async fn failed_upload_is_retried_with_a_new_session() {
    let (data, _) = blob(1000);
    let fake = Fake::start(upload_server(None, 1)).await;
    assert_eq!(
        push(&fake, &data, None).await.unwrap(),
        PushOutcome::Uploaded
    );
    assert_eq!(fake.count("POST", "/v2/a/b/blobs/uploads/"), 2);
}

#[tokio::test]
async fn file_whose_size_disagrees_with_the_descriptor_is_not_pushed() {
    let fake = Fake::start(upload_server(None, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    fs_err::write(&path, b"abc").unwrap();
    let d = Descriptor::new(MediaType::OCI_LAYER_GZIP, Digest::of(b"abc"), 4);
    let err = fake
        .client()
        .push_blob_file(&fake.reference("a/b"), &d, &path, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::FileSize { .. }), "{err:?}");
    assert!(fake.requests().is_empty());
}

fn mirrored_client(origin: &Fake, mirror: &Fake) -> Client {
    let mut settings = RegistrySettings::default()
        .with_insecure(&origin.host)
        .with_insecure(&mirror.host);
    settings
        .mirrors
        .insert(origin.host.clone(), vec![mirror.host.clone()]);
    Client::with_credentials(settings, CredentialSource::None).unwrap()
}

#[tokio::test]
async fn mirror_is_tried_first_and_a_failing_mirror_falls_back_to_the_origin() {
    let (data, d) = blob(5000);
    let data2 = data.clone();
    let origin = Fake::start(move |_| ok(&data2)).await;
    let missing = Fake::start(|_| status(404)).await;
    let (res, got) = pull(
        &mirrored_client(&origin, &missing),
        &origin.reference("a/b"),
        &d,
    )
    .await;
    res.unwrap();
    assert_eq!(got, data);
    assert_eq!((missing.requests().len(), origin.requests().len()), (1, 1));

    let data3 = data.clone();
    let good = Fake::start(move |_| ok(&data3)).await;
    let (res, _) = pull(
        &mirrored_client(&origin, &good),
        &origin.reference("a/b"),
        &d,
    )
    .await;
    res.unwrap();
    assert_eq!(
        (good.requests().len(), origin.requests().len()),
        (1, 1),
        "origin was asked though the mirror had it"
    );
}
