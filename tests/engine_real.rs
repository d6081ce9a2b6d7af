//! The engine module against the real Docker and Podman of the test bed
//! (`scripts/testbed`). Each test runs on both engines and skips, saying
//! why, an engine whose socket is absent.
//!
//! The base image is the test bed's mmdebstrap minbase rootfs, loaded as a
//! one-layer docker-archive; its config sets `Entrypoint: ["false"]` so
//! that every RUN also checks that a template's entrypoint is cleared.
//! The numbers in the report come from tests/engine_measure.rs.

mod engine_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use engine_support::*;
use tplbuild::engine::{
    connect, connect_host, Change, ChangeKind, ContainerGuard, ContainerSpec, EngineChoice,
    EngineError, EngineKind, LoadSpec, Network, LABEL_HOST, LABEL_PID, LABEL_STARTED, LABEL_STEP,
};
use tplbuild::oci::Digest;

#[tokio::test]
async fn connect_reports_each_engine_with_api_1_41() {
    for engine in engines().await {
        let info = engine.info();
        assert_eq!(info.api_version, "1.41", "{info:?}");
        assert!(!info.version.is_empty(), "{info:?}");
        match info.kind {
            EngineKind::Docker => assert_eq!(info.host, format!("unix://{DOCKER_SOCKET}")),
            EngineKind::Podman => assert_eq!(info.host, format!("unix://{PODMAN_SOCKET}")),
        }
    }
}

#[tokio::test]
async fn connect_podman_finds_the_root_socket_and_detects_podman() {
    if !std::path::Path::new(PODMAN_SOCKET).exists() {
        eprintln!("skipping: {PODMAN_SOCKET} is absent (run scripts/testbed)");
        assert!(std::env::var_os("TPLBUILD_TEST_REQUIRE_TESTBED").is_none());
        return;
    }
    let engine = connect(EngineChoice::Podman).await.unwrap();
    assert_eq!(engine.info().kind, EngineKind::Podman);
    assert_eq!(engine.info().host, format!("unix://{PODMAN_SOCKET}"));
}

#[tokio::test]
async fn docker_socket_is_detected_as_docker() {
    if !std::path::Path::new(DOCKER_SOCKET).exists() {
        eprintln!("skipping: {DOCKER_SOCKET} is absent (run scripts/testbed)");
        assert!(std::env::var_os("TPLBUILD_TEST_REQUIRE_TESTBED").is_none());
        return;
    }
    let engine = connect_host(&format!("unix://{DOCKER_SOCKET}"))
        .await
        .unwrap();
    assert_eq!(engine.info().kind, EngineKind::Docker);
}

#[tokio::test]
async fn load_image_makes_the_tag_and_remove_image_takes_it_away_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let layer = small_layer(dir.path(), &[("hello.txt", b"hello")]);
    let spec = LoadSpec {
        config_json: config_for(&[&layer], None),
        layers: vec![layer],
    };
    for engine in engines().await {
        let tag = format!(
            "tplbuild-test/small:{}-{}",
            kind(&engine),
            std::process::id()
        );
        assert!(!engine.has_image(&tag).await.unwrap());
        engine
            .load_image(&tag, &spec)
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e:#?}", kind(&engine)));
        assert!(engine.has_image(&tag).await.unwrap(), "{:?}", kind(&engine));
        engine.remove_image(&tag).await.unwrap();
        assert!(
            !engine.has_image(&tag).await.unwrap(),
            "{:?}",
            kind(&engine)
        );
        engine.remove_image(&tag).await.unwrap();
    }
}

#[tokio::test]
async fn load_image_of_an_image_the_engine_holds_only_tags_it_without_reading_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let layer = small_layer(dir.path(), &[("hello.txt", b"tag me")]);
    let spec = LoadSpec {
        config_json: config_for(&[&layer], None),
        layers: vec![layer.clone()],
    };
    for engine in engines().await {
        let first = format!(
            "localhost/tplbuild-test/first:{}-{}",
            kind(&engine),
            std::process::id()
        );
        let second = format!(
            "localhost/tplbuild-test/second:{}-{}",
            kind(&engine),
            std::process::id()
        );
        engine.load_image(&first, &spec).await.unwrap();
        fs_err::rename(&layer.blob_path, dir.path().join("moved")).unwrap();
        let result = engine.load_image(&second, &spec).await;
        fs_err::rename(dir.path().join("moved"), &layer.blob_path).unwrap();
        result.unwrap_or_else(|e| panic!("{:?}: {e:#?}", kind(&engine)));
        assert!(
            engine.has_image(&second).await.unwrap(),
            "{:?}",
            kind(&engine)
        );
        engine.remove_image(&first).await.unwrap();
        engine.remove_image(&second).await.unwrap();
    }
}

#[tokio::test]
async fn image_loaded_under_a_short_tag_is_found_and_usable_by_that_tag() {
    for engine in engines().await {
        let base = base_image(&engine).await;
        let (_, spec) = base_spec();
        let tag = format!(
            "tplbuild-test/short:{}-{}",
            kind(&engine),
            std::process::id()
        );
        engine.load_image(&tag, &spec).await.unwrap();
        assert!(engine.has_image(&tag).await.unwrap(), "{:?}", kind(&engine));
        let c = engine
            .create(&ContainerSpec {
                image: tag.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e:#?}", kind(&engine)));
        engine.remove(&c).await.unwrap();
        engine.remove_image(&tag).await.unwrap();
        assert!(
            engine.has_image(&base).await.unwrap(),
            "{:?}: the other tag stays",
            kind(&engine)
        );
    }
}

#[tokio::test]
async fn load_image_refuses_a_blob_that_does_not_match_its_diff_id_and_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut layer = small_layer(dir.path(), &[("hello.txt", b"hello")]);
    layer.diff_id = Digest::of(b"not this layer");
    let spec = LoadSpec {
        config_json: config_for(&[&layer], None),
        layers: vec![layer],
    };
    for engine in engines().await {
        let tag = format!(
            "localhost/tplbuild-test/bad:{}-{}",
            kind(&engine),
            std::process::id()
        );
        let err = engine.load_image(&tag, &spec).await.unwrap_err();
        assert!(
            matches!(err, EngineError::LayerMismatch { .. }),
            "{:?}: {err}",
            kind(&engine)
        );
        assert!(
            !engine.has_image(&tag).await.unwrap(),
            "{:?}",
            kind(&engine)
        );
    }
}

#[tokio::test]
async fn run_streams_stdout_and_stderr_lines_passes_env_and_returns_the_exit_code() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let spec = ContainerSpec {
            image,
            env: vec!["GREETING=hello world".into()],
            script: Some("echo \"$GREETING\"; echo to-stderr >&2; pwd; id -u; exit 7".into()),
            network: Network::None,
            platform: None,
        };
        let guard = ContainerGuard::new(&engine, engine.create(&spec).await.unwrap());
        let mut lines = Vec::new();
        let code = engine
            .run(guard.container(), |_, l| lines.push(l.to_string()))
            .await;
        guard.remove().await.unwrap();
        let code = code.unwrap_or_else(|e| panic!("{:?}: {e:#?}", kind(&engine)));
        // exit 7, not `false`'s 1: the image's entrypoint was cleared.
        assert_eq!(code, 7, "{:?}: {lines:?}", kind(&engine));
        for want in ["hello world", "to-stderr", "/", "0"] {
            assert!(
                lines.iter().any(|l| l == want),
                "{:?}: {want:?} not in {lines:?}",
                kind(&engine)
            );
        }
    }
}

#[tokio::test]
async fn run_of_a_successful_script_returns_zero() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let spec = ContainerSpec {
            image,
            script: Some("true".into()),
            ..Default::default()
        };
        let guard = ContainerGuard::new(&engine, engine.create(&spec).await.unwrap());
        let code = engine.run(guard.container(), |_, _| {}).await;
        guard.remove().await.unwrap();
        assert_eq!(code.unwrap(), 0, "{:?}", kind(&engine));
    }
}

#[tokio::test]
async fn create_labels_the_container_as_a_tplbuild_step_of_this_process() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let spec = ContainerSpec {
            image,
            ..Default::default()
        };
        let guard = ContainerGuard::new(&engine, engine.create(&spec).await.unwrap());
        let inspect = engine.inspect(guard.container()).await.unwrap();
        let labels = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let network = inspect
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone());
        guard.remove().await.unwrap();
        assert_eq!(
            labels.get(LABEL_STEP).map(String::as_str),
            Some("1"),
            "{:?}: {labels:?}",
            kind(&engine)
        );
        assert_eq!(labels.get(LABEL_PID), Some(&std::process::id().to_string()));
        assert!(labels
            .get(LABEL_STARTED)
            .is_some_and(|s| s.parse::<u64>().is_ok()));
        assert!(labels.contains_key(LABEL_HOST));
        assert_eq!(network.as_deref(), Some("host"), "{:?}", kind(&engine));
    }
}

/// COPY's path: upload into a never-started container, then read the diff
/// both ways (changes + export, and the upper dir).
#[tokio::test]
async fn uploaded_files_show_in_changes_export_and_upper_dir() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let spec = ContainerSpec {
            image,
            script: None,
            ..Default::default()
        };
        let guard = ContainerGuard::new(&engine, engine.create(&spec).await.unwrap());
        let c = guard.container().clone();
        let tar = tar_of(&[("copied/hello.txt", b"hello from the host\n")]);
        engine
            .upload(&c, "/opt", as_stream(tar))
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e:#?}", kind(&engine)));

        let changes = engine.changes(&c).await.unwrap();
        let want = Change {
            path: "/opt/copied/hello.txt".into(),
            kind: ChangeKind::Added,
        };
        assert!(changes.contains(&want), "{:?}: {changes:?}", kind(&engine));

        let files = exported_files(&engine, &c, &["opt/copied/hello.txt"]).await;
        assert_eq!(
            files.get("opt/copied/hello.txt").map(Vec::as_slice),
            Some(&b"hello from the host\n"[..])
        );

        let upper = engine
            .upper_dir(&c)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{:?}: no upper dir", kind(&engine)));
        let copied = upper.join("opt/copied/hello.txt");
        assert_eq!(fs_err::read(&copied).unwrap(), b"hello from the host\n");
        let meta = std::os::unix::fs::MetadataExt::uid(&fs_err::metadata(&copied).unwrap());
        assert_eq!(
            meta,
            1234,
            "{:?}: the archive API keeps numeric owners",
            kind(&engine)
        );
        guard.remove().await.unwrap();
        assert!(!container_exists(&engine, &c.id).await);
    }
}

#[tokio::test]
async fn remove_is_idempotent() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let c = engine
            .create(&ContainerSpec {
                image,
                ..Default::default()
            })
            .await
            .unwrap();
        engine.remove(&c).await.unwrap();
        assert!(!container_exists(&engine, &c.id).await);
        engine.remove(&c).await.unwrap();
    }
}

#[tokio::test]
async fn remove_kills_a_running_container() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let spec = ContainerSpec {
            image,
            script: Some("echo started; sleep 300".into()),
            network: Network::None,
            ..Default::default()
        };
        let c = engine.create(&spec).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let run = {
            let (engine, c) = (engine.clone(), c.clone());
            tokio::spawn(async move {
                engine
                    .run(&c, move |_, l| {
                        let _ = tx.send(l.to_string());
                    })
                    .await
            })
        };
        let first = rx.recv().await;
        if first.is_none() {
            panic!("{:?}: run ended early: {:?}", kind(&engine), run.await);
        }
        assert_eq!(first.as_deref(), Some("started"));
        let t = Instant::now();
        engine.remove(&c).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(30));
        assert!(
            !container_exists(&engine, &c.id).await,
            "{:?}",
            kind(&engine)
        );
        // The run sees its container die: a code or an error, not a hang.
        let _ = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("run returned");
    }
}

#[tokio::test]
async fn dropped_guard_removes_its_container_in_the_background() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let c = engine
            .create(&ContainerSpec {
                image,
                ..Default::default()
            })
            .await
            .unwrap();
        drop(ContainerGuard::new(&engine, c.clone()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while container_exists(&engine, &c.id).await {
            assert!(
                Instant::now() < deadline,
                "{:?}: still there",
                kind(&engine)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn cleanup_leftovers_removes_a_step_container_whose_pid_is_dead_and_keeps_live_ones() {
    let host = fs_err::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    for engine in engines().await {
        let image = base_image(&engine).await;
        // Containers as a killed run would have left them; made with bollard
        // directly because `create` always writes our own, live pid.
        let docker = bollard::Docker::connect_with_host(&engine.info().host).unwrap();
        let make = |pid: u32| {
            let labels = HashMap::from([
                (LABEL_STEP.to_string(), "1".to_string()),
                (LABEL_PID.to_string(), pid.to_string()),
                (LABEL_STARTED.to_string(), "1700000000".to_string()),
                (LABEL_HOST.to_string(), host.clone()),
            ]);
            let body = bollard::models::ContainerCreateBody {
                image: Some(image.clone()),
                cmd: Some(vec!["true".into()]),
                labels: Some(labels),
                host_config: Some(bollard::models::HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let docker = docker.clone();
            async move {
                docker
                    .create_container(
                        None::<bollard::query_parameters::CreateContainerOptions>,
                        body,
                    )
                    .await
                    .unwrap()
                    .id
            }
        };
        let dead = make(dead_pid()).await;
        // One of this live process, made the normal way.
        let live = engine
            .create(&ContainerSpec {
                image: image.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let removed = engine.cleanup_leftovers().await.unwrap();
        assert!(removed >= 1, "{:?}", kind(&engine));
        assert!(
            !container_exists(&engine, &dead).await,
            "{:?}: leftover still there",
            kind(&engine)
        );
        assert!(
            container_exists(&engine, &live.id).await,
            "{:?}: live step removed",
            kind(&engine)
        );
        engine.remove(&live).await.unwrap();
    }
}
