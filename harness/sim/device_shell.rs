//! The simulated device as the SSH server sees it: `sim::snapshot::ShellTarget`, built
//! from the device's own [`WindowsSnapshot`](super::enrollment::WindowsSnapshot) and the
//! TPM its simulated hardware has.

use std::sync::Arc;

use super::device::Device;
use super::enrollment::JoinKind;
use super::profile::{Profile, SWTPM_FIRMWARE, SWTPM_MANUFACTURER};
use super::snapshot::{self, ShellTarget, TpmSnapshot, WinEvent};
use crate::model::inventory::TpmConn;

impl ShellTarget for Arc<Device> {
    fn snapshot(&self) -> snapshot::WindowsSnapshot {
        let s = self.windows_snapshot();
        // The simulated hardware's own TPM: the swtpm behind the device's TCTI when it
        // has one, otherwise the one its model ships with. Never the inventory's
        // expectation, which is what the harness checks against.
        let spec = self.spec();
        let profile = Profile::named(
            spec.sim
                .as_ref()
                .and_then(|s| s.profile.as_deref())
                .unwrap_or(&spec.model),
        );
        let (manufacturer, firmware) = match spec.tpm_access {
            Some(TpmConn::Tcti(_)) => (SWTPM_MANUFACTURER, SWTPM_FIRMWARE),
            _ => (profile.tpm_manufacturer, profile.tpm_firmware),
        };
        let tpm = TpmSnapshot {
            present: true,
            ready: true,
            enabled: true,
            activated: true,
            owned: true,
            manufacturer_id_txt: manufacturer.to_string(),
            manufacturer_version: firmware.to_string(),
            family: "2.0".to_string(),
            locked_out: false,
        };
        snapshot::WindowsSnapshot {
            device_id: s.device_id,
            serial: s.serial,
            powered: s.powered,
            booted: s.booted,
            rebooting: s.rebooting,
            edition: s.edition,
            version: s.version,
            build: s.build.unwrap_or_default(),
            join: s.join.map(|j| match j {
                JoinKind::Entra => snapshot::JoinKind::Entra,
                JoinKind::Hybrid => snapshot::JoinKind::Hybrid,
            }),
            azure_ad_joined: s.azure_ad_joined,
            domain_joined: s.domain_joined,
            tenant_id: s.tenant_id,
            tenant_domain: s.tenant_domain,
            entra_device_id: None,
            ztd_id: s.ztd_id,
            profile_name: s.profile_name,
            esp_phase: s.esp_phase,
            last_error: s.last_error,
            events: s
                .events
                .into_iter()
                .map(|(id, channel, message, at)| WinEvent {
                    id,
                    channel,
                    message,
                    at,
                })
                .collect(),
            technician_completed_at: s.technician_completed_at,
            now: s.now,
            wlidsvc_disabled: s.wlidsvc_disabled,
            tpm,
        }
    }

    fn factory_reset(&self) {
        Device::factory_reset(self);
    }
}
