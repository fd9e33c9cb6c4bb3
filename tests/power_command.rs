//! Power through shell commands, as LAVA configures it: the "controller" is a file.

use std::time::Duration;

use aplab::device::power::Settle;
use aplab::device::power::command::CommandPower;
use aplab::device::{FailureClass, Power, PowerState, ReadBack};

fn quick() -> Settle {
    Settle {
        within: Duration::from_secs(1),
        every: Duration::from_millis(10),
    }
}

#[tokio::test]
async fn commands_run_and_state_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("outlet");
    let f = f.display();
    let power = CommandPower::new(
        format!("echo on > {f}; echo on >> {f}.log"),
        format!("echo off > {f}; echo off >> {f}.log"),
        None,
        Some(format!("cat {f}")),
    )
    .with_settle(quick());
    assert_eq!(
        power.on().await.unwrap(),
        ReadBack::Confirmed(PowerState::On)
    );
    assert_eq!(
        power.off().await.unwrap(),
        ReadBack::Confirmed(PowerState::Off)
    );
    // No cycle command: off, then on.
    assert_eq!(
        power.cycle().await.unwrap(),
        ReadBack::Confirmed(PowerState::On)
    );
    let log = std::fs::read_to_string(format!("{f}.log")).unwrap();
    assert_eq!(log, "on\noff\noff\non\n");
    assert_eq!(
        power.state().await.unwrap(),
        ReadBack::Confirmed(PowerState::On)
    );
}

#[tokio::test]
async fn without_a_state_command_nothing_is_read_back() {
    let power = CommandPower::new("true".into(), "true".into(), Some("true".into()), None);
    assert_eq!(
        power.cycle().await.unwrap(),
        ReadBack::Unavailable("no power state command is configured".into())
    );
}

#[tokio::test]
async fn failures_say_which_command_and_why() {
    let power = CommandPower::new(
        "echo relay jammed >&2; exit 3".into(),
        "true".into(),
        None,
        Some("echo maybe".into()),
    )
    .with_settle(quick());
    let err = power.on().await.unwrap_err();
    assert_eq!(err.class, FailureClass::Infrastructure);
    assert!(err.message.contains("relay jammed"), "{}", err.message);
    let err = power.off().await.unwrap_err();
    assert!(err.message.contains("printed \"maybe\""), "{}", err.message);
    // A state that never follows.
    let stuck = CommandPower::new("true".into(), "true".into(), None, Some("echo on".into()))
        .with_settle(quick());
    let err = stuck.off().await.unwrap_err();
    assert!(
        err.message
            .starts_with("power state did not change to Off within 1s")
    );
}

#[tokio::test]
async fn the_inventory_builds_a_command_controller() {
    let conn = aplab::model::inventory::PowerConn::Command {
        on: "true".into(),
        off: "true".into(),
        cycle: None,
        state: Some("echo OFF".into()),
    };
    let power = aplab::device::power::from_inventory(&conn, None).unwrap();
    assert_eq!(
        power.state().await.unwrap(),
        ReadBack::Confirmed(PowerState::Off)
    );
}
