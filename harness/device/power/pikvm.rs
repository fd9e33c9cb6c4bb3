//! Power through a PiKVM's ATX board: buttons pressed by kvmd, state from the power LED.

use async_trait::async_trait;
use reqwest::Method;

use super::{Settle, settle};
use crate::device::pikvm::PikvmSession;
use crate::device::{DeviceError, DeviceResult, Power, PowerState, ReadBack};

pub struct PikvmPower {
    kvm: PikvmSession,
    settle: Settle,
}

impl PikvmPower {
    pub fn new(kvm: PikvmSession) -> Self {
        PikvmPower {
            kvm,
            settle: Settle::default(),
        }
    }

    pub fn with_settle(mut self, settle: Settle) -> Self {
        self.settle = settle;
        self
    }

    async fn read_state(&self) -> DeviceResult<Option<PowerState>> {
        let atx = self.kvm.call_json(Method::GET, "/api/atx", None).await?;
        match atx.pointer("/leds/power").and_then(|v| v.as_bool()) {
            Some(true) => Ok(Some(PowerState::On)),
            Some(false) => Ok(Some(PowerState::Off)),
            None => Err(DeviceError::infrastructure(
                "the PiKVM's /api/atx answer has no leds.power",
            )
            .with_hint(format!(
                "check that the ATX board of the PiKVM at {} is enabled",
                self.kvm.url()
            ))),
        }
    }

    async fn act(&self, action: &str, want: PowerState) -> DeviceResult<ReadBack> {
        self.kvm
            .call_json(
                Method::POST,
                &format!("/api/atx/power?action={action}"),
                None,
            )
            .await?;
        let controller = format!("PiKVM ATX wiring at {}", self.kvm.url());
        settle(want, self.settle, &controller, || self.read_state()).await
    }
}

#[async_trait]
impl Power for PikvmPower {
    async fn on(&self) -> DeviceResult<ReadBack> {
        self.act("on", PowerState::On).await
    }
    async fn off(&self) -> DeviceResult<ReadBack> {
        // A long press: the harness needs the device off, not a request to shut down.
        self.act("off_hard", PowerState::Off).await
    }
    async fn cycle(&self) -> DeviceResult<ReadBack> {
        self.act("reset_hard", PowerState::On).await
    }
    async fn state(&self) -> DeviceResult<ReadBack> {
        Ok(match self.read_state().await? {
            Some(state) => ReadBack::Confirmed(state),
            None => ReadBack::Unavailable("the PiKVM reports no power LED".into()),
        })
    }
}
