//! Keep-on-failure: how an engineer gets at a device left at its failed step. Only data;
//! the CLI decides how to show it.

use crate::model::inventory::{ConsoleConn, Device, KeyboardConn, ScreenConn};

use super::events::AttachRoute;

/// Every way into `device` the inventory knows.
pub(crate) fn routes(device: &Device) -> Vec<AttachRoute> {
    let mut routes = Vec::new();
    if let Some(console) = &device.console {
        routes.push(match console {
            ConsoleConn::Serial { device, baud } => AttachRoute {
                capability: "console".into(),
                transport: "serial".into(),
                address: device.display().to_string(),
                command: Some(format!("picocom -b {baud} {}", device.display())),
            },
            ConsoleConn::Tcp { host, port } => AttachRoute {
                capability: "console".into(),
                transport: "tcp".into(),
                address: format!("{host}:{port}"),
                command: Some(format!("socat -,raw,echo=0 tcp:{host}:{port}")),
            },
            ConsoleConn::Rfc2217 { host, port, .. } => AttachRoute {
                capability: "console".into(),
                transport: "rfc2217".into(),
                address: format!("{host}:{port}"),
                command: Some(format!("telnet {host} {port}")),
            },
        });
    }
    if let Some(shell) = &device.shell {
        routes.push(AttachRoute {
            capability: "shell".into(),
            transport: "ssh".into(),
            address: format!("{}:{}", shell.host, shell.port),
            command: Some(format!(
                "ssh -i {} -o UserKnownHostsFile={} -p {} {}@{}",
                shell.key_file.display(),
                shell.known_hosts.display(),
                shell.port,
                shell.user,
                shell.host
            )),
        });
    }
    if let Some(ScreenConn::Pikvm(kvm)) = &device.screen {
        routes.push(AttachRoute {
            capability: "screen".into(),
            transport: "pikvm".into(),
            address: kvm.url.clone(),
            command: None,
        });
    }
    if let Some(keyboard) = &device.keyboard {
        let (transport, address) = match keyboard {
            KeyboardConn::Ch9329 { device, .. } => ("ch9329", device.display().to_string()),
            KeyboardConn::Pikvm(kvm) => ("pikvm", kvm.url.clone()),
        };
        routes.push(AttachRoute {
            capability: "keyboard".into(),
            transport: transport.into(),
            address,
            command: None,
        });
    }
    if let Some(power) = &device.power {
        let controller = power.controller();
        let (transport, address) = controller
            .split_once(':')
            .map(|(t, a)| (t.to_string(), a.to_string()))
            .unwrap_or((controller.clone(), String::new()));
        routes.push(AttachRoute {
            capability: "power".into(),
            transport,
            address,
            command: None,
        });
    }
    routes
}
