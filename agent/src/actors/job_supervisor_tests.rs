//! `JobSupervisor` on its own: a real export into a real repository, with a stand-in root.

use std::path::Path;

use hyperexport_proto::v1::TaskCheckpointState;
use hyperexport_shared::Repository;
use hyperexport_shared::keys::Secret;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::*;

/// Stands in for `AgentRoot`: passes the task's news to the test.
struct Collector;

impl Actor for Collector {
    type Msg = AgentRootMsg;
    type State = mpsc::UnboundedSender<AgentBody>;
    type Arguments = mpsc::UnboundedSender<AgentBody>;

    async fn pre_start(&self, _: ActorRef<Self::Msg>, tx: Self::Arguments) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle(&self, _: ActorRef<Self::Msg>, message: Self::Msg, tx: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let AgentRootMsg::Up { body, .. } = message {
            let _ = tx.send(body);
        }
        Ok(())
    }
}

const SIZE: usize = (8 << 20) + 123;

/// A folder with VM `vm` (a raw image of random bytes) and a repository path beside it.
fn setup() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("vms")).unwrap();
    let mut data = vec![0u8; SIZE];
    hyperexport_shared::crypto::random_bytes(&mut data);
    std::fs::write(dir.path().join("vms/vm.img"), &data).unwrap();
    (dir, data)
}

fn secret() -> Secret {
    Secret::Password(b"unit test".to_vec())
}

struct Task {
    supervisor: ActorRef<JobSupervisorMsg>,
    cancel: Arc<AtomicBool>,
    news: mpsc::UnboundedReceiver<AgentBody>,
}

async fn start(dir: &Path, attempt: u32, resume: Option<TaskCheckpointState>, faults: TestFaults) -> Task {
    let (tx, news) = mpsc::unbounded_channel();
    let (root, _) = Actor::spawn(None, Collector, tx).await.unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let assign = Assign {
        task_id: "t1".into(),
        job_id: "j1".into(),
        vm: "vm".into(),
        target: format!("file://{}", dir.join("repo").display()),
        attempt,
        resume,
        replicate_to: Vec::new(),
        retention: None,
        term: 0,
    };
    let config = JobSupervisorConfig {
        assign,
        source: crate::source::AgentSource::Local(dir.join("vms")),
        access: TargetAccess { secret: Some(secret()), allow_unencrypted: false },
        threads: 2,
        faults,
        restart_backoff: Duration::from_millis(10),
        cancel: Arc::clone(&cancel),
        tls: None,
        root,
        limiter: crate::bandwidth::Limiter::new(),
    };
    let (supervisor, _) = Actor::spawn(None, JobSupervisor, config).await.unwrap();
    Task { supervisor, cancel, news }
}

/// Every message until the result.
async fn until_finished(news: &mut mpsc::UnboundedReceiver<AgentBody>) -> (Vec<AgentBody>, TaskFinished) {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), news.recv()).await.expect("a result within a minute") {
            Some(AgentBody::Finished(f)) => return (seen, f),
            Some(other) => seen.push(other),
            None => panic!("the supervisor went away without a result"),
        }
    }
}

fn points(dir: &Path) -> Vec<hyperexport_shared::point::RecoveryPoint> {
    Repository::open(&dir.join("repo"), Some(&secret())).unwrap().list_points().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_exports_its_vm_with_progress_and_checkpoints() {
    let (dir, data) = setup();
    let mut task = start(dir.path(), 1, None, TestFaults::default()).await;
    let (seen, finished) = until_finished(&mut task.news).await;
    assert_eq!(finished.outcome(), TaskOutcome::Succeeded, "{}", finished.error);
    let point = points(dir.path()).pop().unwrap();
    assert_eq!(point.id, finished.point);
    assert_eq!(point.disks[0].sha256, hex::encode(Sha256::digest(&data)));
    let last = seen.iter().rev().find_map(|b| if let AgentBody::Checkpoint(c) = b { c.disk.clone() } else { None }).unwrap();
    assert_eq!(last.sha256, point.disks[0].sha256, "the last checkpoint completes the disk");
    assert!(seen.iter().any(|b| matches!(b, AgentBody::Progress(p) if p.phase() == TaskPhase::Verifying)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_task_publishes_nothing_and_a_new_attempt_resumes_from_its_checkpoint() {
    let (dir, data) = setup();
    let stall = TestFaults { stall_after_new_chunks: Some(1), ..Default::default() };
    let mut task = start(dir.path(), 1, None, stall).await;
    let checkpoint = loop {
        match tokio::time::timeout(Duration::from_secs(60), task.news.recv()).await.expect("a checkpoint within a minute").unwrap() {
            AgentBody::Checkpoint(c) => break c.disk.unwrap(),
            AgentBody::Finished(f) => panic!("finished early: {f:?}"),
            _ => {}
        }
    };
    task.cancel.store(true, Ordering::SeqCst);
    task.supervisor.send_message(JobSupervisorMsg::Cancel { moved: false }).unwrap();
    let (_, finished) = until_finished(&mut task.news).await;
    assert_eq!(finished.outcome(), TaskOutcome::Cancelled);
    assert!(points(dir.path()).is_empty(), "a cancelled task published a point");

    assert_eq!((checkpoint.start_chunk, checkpoint.chunk_ids.len()), (0, 32), "one 4 MiB chunk is durable");
    let resume = TaskCheckpointState { disks: vec![checkpoint] };
    let mut again = start(dir.path(), 2, Some(resume), TestFaults::default()).await;
    let (seen, finished) = until_finished(&mut again.news).await;
    assert_eq!(finished.outcome(), TaskOutcome::Succeeded, "{}", finished.error);
    let read = seen.iter().rev().find_map(|b| if let AgentBody::Progress(p) = b { Some(p.bytes_read) } else { None }).unwrap();
    assert_eq!(read, SIZE as u64 - (4 << 20), "the resumed attempt reads only what the checkpoint does not cover");
    assert_eq!(points(dir.path())[0].disks[0].sha256, hex::encode(Sha256::digest(&data)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_disk_reader_is_restarted_within_the_budget_then_the_task_fails() {
    let (dir, _) = setup();
    let opts = hyperexport_shared::repo::InitOptions {
        chunk_size: hyperexport_shared::chunk::DEFAULT_CHUNK_SIZE,
        compression: hyperexport_shared::compress::Compression::None,
        secret: Some(secret()),
    };
    Repository::init(&dir.path().join("repo"), opts).unwrap();
    // `chunks` is a file, not a folder: every chunk the reader stores fails.
    std::fs::remove_dir_all(dir.path().join("repo/chunks")).unwrap();
    std::fs::write(dir.path().join("repo/chunks"), b"").unwrap();
    let mut task = start(dir.path(), 1, None, TestFaults::default()).await;
    let (_, finished) = until_finished(&mut task.news).await;
    assert_eq!(finished.outcome(), TaskOutcome::Failed);
    assert!(finished.retryable);
    assert!(finished.error.contains(&format!("after {RESTART_BUDGET} restarts")), "{}", finished.error);
    assert!(points(dir.path()).is_empty());
}
