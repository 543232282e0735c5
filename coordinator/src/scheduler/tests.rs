//! The scheduler's rules on its own state, with a real store and agents as channels.

use std::sync::Arc;

use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::{Assign, CoordinatorMessage, DiskCheckpoint, SubmitRequest, TaskCheckpoint, TaskFinished, TaskOutcome, Vm};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::*;

fn scheduler(dir: &std::path::Path) -> Scheduler {
    Scheduler {
        store: Store::Embedded(Arc::new(crate::store::JobStore::open(dir).unwrap())),
        heartbeat: Duration::from_secs(1),
        grace_until: Instant::now(),
        jobs: HashMap::new(),
        tasks: HashMap::new(),
        checkpoints: HashMap::new(),
        agents: HashMap::new(),
        changes: broadcast::channel(16).0,
        turn: Turn::default(),
        ready_since: HashMap::new(),
        serving: Default::default(),
        slot_free: HashMap::new(),
        replica_states: HashMap::new(),
        replicas_recorded: HashSet::default(),
        drills: HashMap::new(),
        bandwidth: crate::bandwidth::plan::Plan::new(crate::bandwidth::config::Compiled::default_config()),
        detached: HashMap::new(),
        leases: None,
        loads: Default::default(),
    }
}

/// Attaches agent `id` serving `vms`; returns what the scheduler sends it.
fn attach(s: &mut Scheduler, id: &str, region: &str, capacity: u32, vms: &[&str]) -> mpsc::Receiver<Result<CoordinatorMessage, Status>> {
    let (tx, rx) = mpsc::channel(64);
    let vms = vms.iter().map(|n| Vm { name: n.to_string(), provider: "local".into(), ..Default::default() }).collect();
    let register = Register { agent_id: id.into(), region: region.into(), capacity, vms, ..Default::default() };
    s.handle(Event::Attached { register, connection: 1, tx });
    rx
}

async fn submit(s: &mut Scheduler, vms: &[&str], priority: i32, max_parallel: u32) -> Job {
    let req = SubmitRequest {
        vms: vms.iter().map(|v| v.to_string()).collect(),
        target: "file:///r".into(),
        priority,
        max_parallel,
        ..Default::default()
    };
    let (tx, rx) = oneshot::channel();
    s.handle(Event::Submit(jobs::new_job(req).unwrap(), Instant::now(), tx));
    turn(s).await;
    let id = rx.await.unwrap().unwrap();
    s.jobs.get(&id).cloned().expect("a new job stays in memory")
}

async fn turn(s: &mut Scheduler) {
    s.expire();
    s.place();
    s.commit().await.unwrap();
}

/// The assignments waiting in an agent's stream.
fn assigned(rx: &mut mpsc::Receiver<Result<CoordinatorMessage, Status>>) -> Vec<Assign> {
    let mut out = Vec::new();
    while let Ok(message) = rx.try_recv() {
        if let Ok(CoordinatorMessage { body: Some(CoordinatorBody::Assign(a)) }) = message {
            out.push(a);
        }
    }
    out
}

#[tokio::test]
async fn higher_priority_goes_first_and_job_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path());
    let mut agent = attach(&mut s, "a", "eu", 1, &["web", "db", "app"]);
    let low = submit(&mut s, &["web"], 1, 0).await;
    assert_eq!(assigned(&mut agent).len(), 1, "the only slot goes to the first job");
    let high = submit(&mut s, &["db"], 9, 0).await;
    let lower = submit(&mut s, &["app"], 0, 0).await;
    assert!(assigned(&mut agent).is_empty(), "no free slot");
    let (task, attempt) = (&low.tasks[0].id, 1);
    let done =
        TaskFinished { task_id: task.clone(), attempt, outcome: TaskOutcome::Succeeded as i32, point: "p".into(), ..Default::default() };
    s.handle(Event::FromAgent { agent: "a".into(), connection: 1, body: AgentBody::Finished(done), received: Instant::now() });
    turn(&mut s).await;
    let next = assigned(&mut agent);
    assert_eq!(next.iter().map(|a| a.job_id.as_str()).collect::<Vec<_>>(), [high.id.as_str()], "priority 9 before 0");
    assert_ne!(next[0].job_id, lower.id);

    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path());
    let mut agent = attach(&mut s, "a", "eu", 3, &["web", "db", "app"]);
    submit(&mut s, &["web", "db", "app"], 0, 1).await;
    assert_eq!(assigned(&mut agent).len(), 1, "max_parallel 1 holds though the agent has 3 slots");
}

#[tokio::test]
async fn a_lost_agent_s_task_resumes_elsewhere_with_its_checkpoint_and_stale_news_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path());
    let mut first = attach(&mut s, "a", "eu", 1, &["web"]);
    let job = submit(&mut s, &["web"], 0, 0).await;
    let assign = assigned(&mut first).pop().unwrap();
    let disk = DiskCheckpoint {
        name: "d".into(),
        size: 100,
        chunk_size: 10,
        chunk_ids: vec![7; 64],
        sha256_state: vec![1; 32],
        ..Default::default()
    };
    let checkpoint = TaskCheckpoint { task_id: assign.task_id.clone(), attempt: 1, disk: Some(disk) };
    s.handle(Event::FromAgent { agent: "a".into(), connection: 1, body: AgentBody::Checkpoint(checkpoint), received: Instant::now() });
    turn(&mut s).await;
    assert_eq!(s.store.get(&job.id).await.unwrap().unwrap().tasks[0].checkpoint_bytes, 20);

    let mut second = attach(&mut s, "b", "eu", 1, &["web"]);
    s.handle(Event::Detached { agent: "a".into(), connection: 1, reason: "stream broken" });
    turn(&mut s).await;
    assert!(assigned(&mut second).is_empty(), "not reassigned while the first agent's lease runs");
    // Its lease runs out.
    s.detached.insert("a".into(), Instant::now());
    turn(&mut s).await;
    let again = assigned(&mut second).pop().expect("reassigned to the second agent");
    assert_eq!(again.attempt, 2);
    assert_eq!(again.resume.unwrap().disks[0].chunk_ids.len(), 64, "the assignment carries the checkpoint");

    // A result for attempt 1 (now stale) changes nothing.
    let late = TaskFinished { task_id: assign.task_id.clone(), attempt: 1, outcome: TaskOutcome::Succeeded as i32, ..Default::default() };
    s.handle(Event::FromAgent { agent: "b".into(), connection: 1, body: AgentBody::Finished(late), received: Instant::now() });
    turn(&mut s).await;
    let stored = s.store.get(&job.id).await.unwrap().unwrap();
    assert_eq!((stored.tasks[0].state(), stored.tasks[0].attempt), (JobState::Scheduled, 2));
}

#[tokio::test]
async fn a_job_whose_agents_are_full_does_not_hold_up_later_jobs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path());
    let mut eu = attach(&mut s, "eu-1", "eu", 1, &["web", "db"]);
    let mut us = attach(&mut s, "us-1", "us", 1, &["app"]);
    let mut replies = Vec::new();
    for (vms, region) in [(&["web", "db"][..], "eu"), (&["app"][..], "us")] {
        let req = SubmitRequest {
            vms: vms.iter().map(|v| v.to_string()).collect(),
            region: region.into(),
            target: "file:///r".into(),
            ..Default::default()
        };
        let (tx, rx) = oneshot::channel();
        s.handle(Event::Submit(jobs::new_job(req).unwrap(), Instant::now(), tx));
        replies.push(rx);
    }
    // Both jobs are placed in one turn: the first fills the only eu slot, then the second still
    // gets the us agent.
    turn(&mut s).await;
    let first = replies.remove(0).await.unwrap().unwrap();
    let second = replies.remove(0).await.unwrap().unwrap();
    let on_eu = assigned(&mut eu);
    assert_eq!(on_eu.iter().map(|a| (a.job_id.as_str(), a.vm.as_str())).collect::<Vec<_>>(), [(first.as_str(), "web")]);
    assert_eq!(assigned(&mut us).iter().map(|a| a.job_id.as_str()).collect::<Vec<_>>(), [second.as_str()]);
    let states = |s: &Scheduler| s.jobs[&first].tasks.iter().map(|t| t.state()).collect::<Vec<_>>();
    assert_eq!(states(&s), [JobState::Scheduled, JobState::Pending]);

    // The eu slot frees: the first job's second task goes there.
    let done = TaskFinished {
        task_id: on_eu[0].task_id.clone(),
        attempt: 1,
        outcome: TaskOutcome::Succeeded as i32,
        point: "p".into(),
        ..Default::default()
    };
    s.handle(Event::FromAgent { agent: "eu-1".into(), connection: 1, body: AgentBody::Finished(done), received: Instant::now() });
    turn(&mut s).await;
    assert_eq!(assigned(&mut eu).iter().map(|a| a.vm.as_str()).collect::<Vec<_>>(), ["db"]);
    assert_eq!(states(&s), [JobState::Succeeded, JobState::Scheduled]);
}

#[tokio::test]
async fn a_task_requeued_while_no_agent_is_attached_goes_to_the_next_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path());
    let mut first = attach(&mut s, "a", "eu", 1, &["web"]);
    submit(&mut s, &["web"], 0, 0).await;
    assert_eq!(assigned(&mut first).len(), 1);
    // The only agent is lost: its task is requeued in a turn with no agent to place it on.
    s.lost("a", "test");
    turn(&mut s).await;
    let mut second = attach(&mut s, "b", "eu", 1, &["web"]);
    turn(&mut s).await;
    let again = assigned(&mut second);
    assert_eq!(again.iter().map(|a| a.attempt).collect::<Vec<_>>(), [2], "the requeued task runs on the new agent");
}

#[tokio::test]
async fn a_vm_served_in_one_region_goes_there_and_one_served_in_several_goes_to_any() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scheduler(dir.path());
    // A free eu agent that does not serve the db VMs must not take them; their own region is
    // full after the first.
    let mut eu = attach(&mut s, "a-eu", "eu", 2, &["web", "app"]);
    let mut us = attach(&mut s, "b-us", "us", 1, &["db1", "db2", "app"]);
    submit(&mut s, &["db1", "db2", "web"], 0, 0).await;
    let vms = |rx: &mut mpsc::Receiver<_>| assigned(rx).into_iter().map(|a| a.vm).collect::<Vec<_>>();
    assert_eq!(vms(&mut us), ["db1"]);
    assert_eq!(vms(&mut eu), ["web"]);
    // app is served in both regions: with us full, it goes to eu.
    submit(&mut s, &["app"], 0, 0).await;
    assert_eq!(vms(&mut eu), ["app"]);
    assert!(vms(&mut us).is_empty());
}
