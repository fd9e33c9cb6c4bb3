//! Power through shell commands on the lab host, as LAVA configures it. A state command
//! (printing `on` or `off`) is optional; without it nothing can be read back.

use std::time::Duration;

use async_trait::async_trait;

use super::{Settle, settle};
use crate::device::{DeviceError, DeviceResult, Power, PowerState, ReadBack};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

pub struct CommandPower {
    on: String,
    off: String,
    cycle: Option<String>,
    state: Option<String>,
    settle: Settle,
}

impl CommandPower {
    pub fn new(on: String, off: String, cycle: Option<String>, state: Option<String>) -> Self {
        CommandPower {
            on,
            off,
            cycle,
            state,
            settle: Settle::default(),
        }
    }

    pub fn with_settle(mut self, settle: Settle) -> Self {
        self.settle = settle;
        self
    }

    /// Runs `command` with `sh -c`; returns its stdout, or fails with its stderr.
    async fn run(&self, command: &str) -> DeviceResult<String> {
        let hint = "check the power command in the inventory and the controller it drives";
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child)
            .await
            .map_err(|_| {
                DeviceError::infrastructure(format!(
                    "power command `{command}` did not finish within {}s",
                    COMMAND_TIMEOUT.as_secs()
                ))
                .with_hint(hint)
            })?
            .map_err(|e| {
                DeviceError::infrastructure(format!("cannot run power command `{command}`: {e}"))
                    .with_hint(hint)
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(DeviceError::infrastructure(format!(
                "power command `{command}` failed ({}): {}",
                output.status,
                stderr.trim()
            ))
            .with_hint(hint));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    async fn read_state(&self, command: &str) -> DeviceResult<Option<PowerState>> {
        let out = self.run(command).await?;
        match out.trim().to_ascii_lowercase().as_str() {
            "on" => Ok(Some(PowerState::On)),
            "off" => Ok(Some(PowerState::Off)),
            other => Err(DeviceError::infrastructure(format!(
                "power state command `{command}` printed {other:?}, expected `on` or `off`"
            ))
            .with_hint("check the power state command in the inventory")),
        }
    }

    async fn act(&self, command: &str, want: PowerState) -> DeviceResult<ReadBack> {
        self.run(command).await?;
        match &self.state {
            Some(state) => {
                settle(want, self.settle, "power controller", || {
                    self.read_state(state)
                })
                .await
            }
            None => Ok(no_state()),
        }
    }
}

fn no_state() -> ReadBack {
    ReadBack::Unavailable("no power state command is configured".into())
}

#[async_trait]
impl Power for CommandPower {
    async fn on(&self) -> DeviceResult<ReadBack> {
        self.act(&self.on, PowerState::On).await
    }
    async fn off(&self) -> DeviceResult<ReadBack> {
        self.act(&self.off, PowerState::Off).await
    }
    async fn cycle(&self) -> DeviceResult<ReadBack> {
        match &self.cycle {
            Some(cycle) => self.act(cycle, PowerState::On).await,
            None => {
                self.act(&self.off, PowerState::Off).await?;
                self.act(&self.on, PowerState::On).await
            }
        }
    }
    async fn state(&self) -> DeviceResult<ReadBack> {
        match &self.state {
            Some(state) => Ok(match self.read_state(state).await? {
                Some(s) => ReadBack::Confirmed(s),
                None => no_state(),
            }),
            None => Ok(no_state()),
        }
    }
}
