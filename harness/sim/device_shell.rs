//! The simulated device as the SSH server sees it: `sim::snapshot::ShellTarget`, built
//! from the device's own [`WindowsSnapshot`](super::enrollment::WindowsSnapshot) and the
//! TPM facts the inventory expects it to have.

use super::device::Device;
use super::enrollment::JoinKind;
use super::snapshot::{self, ShellTarget, TpmSnapshot, WinEvent};

impl ShellTarget for Device {
    fn snapshot(&self) -> snapshot::WindowsSnapshot {
        let s = self.windows_snapshot();
        let tpm = match &self.spec().tpm {
            Some(t) => {
                let v2 = t.family == "2.0";
                TpmSnapshot {
                    present: true,
                    ready: v2,
                    enabled: true,
                    activated: true,
                    owned: v2,
                    manufacturer_id_txt: t.manufacturer.clone(),
                    manufacturer_version: t.firmware.clone().unwrap_or_default(),
                    family: t.family.clone(),
                    locked_out: false,
                }
            }
            None => TpmSnapshot::default(),
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
}
