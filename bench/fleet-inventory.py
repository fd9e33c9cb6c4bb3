#!/usr/bin/env python3
"""Writes a virtual-lab inventory of N devices shaped like the shipped one.

Each device: serial console PTY, CH9329 keyboard PTY, Redfish power, PiKVM screen, SSH
shell, TPM facts read through the shell (no swtpm at this scale). One tenant. Ports are
sequential from --base (one per device for SSH, plus four shared ones), paths under the
inventory's directory.

    bench/fleet-inventory.py N FILE [--base PORT] [--time-scale X]
"""

import argparse
import socket
import sys


def free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("n", type=int)
    p.add_argument("file")
    p.add_argument("--base", type=int, default=30000)
    p.add_argument("--time-scale", type=float, default=60)
    a = p.parse_args()
    # Control, tenant, Redfish, PiKVM, then one SSH port per device: the first free
    # run of ports from --base on (other labs may hold some).
    base = a.base
    while True:
        ports = list(range(base, base + 4 + a.n))
        busy = [q for q in ports if not free(q)]
        if not busy:
            break
        base = busy[-1] + 1
        if base + 4 + a.n > 65000:
            sys.exit(f"no {4 + a.n} free consecutive ports from {a.base} on")
    ctl, tenant, redfish, kvm = ports[:4]
    out = [
        f"""lab:
  name: fleet-bench
  ledger: state/ledger.sqlite
  reports: reports
  virtual:
    time_scale: {a.time_scale}
    state_dir: state
    control: 127.0.0.1:{ctl}
    tenant: 127.0.0.1:{tenant}
tenants:
  contoso:
    tenant_id: 6f1c2a55-3b0e-4e8a-9c1d-2a7b5e0c9d11
    client_id: 0b7e6d3c-5a4f-4f21-8e9a-1c2d3e4f5a6b
    client_secret: {{ file: state/secrets/contoso-client-secret }}
    graph_url: http://127.0.0.1:{tenant}
    login_url: http://127.0.0.1:{tenant}
    organization: Contoso Lab
    users:
      default:
        upn: alice@contoso.lab
        password: {{ file: state/secrets/alice-password }}
templates:
  thinkpad-t14:
    tenant: contoso
    manufacturer: LENOVO
    model: ThinkPad T14 Gen 4
    windows: {{ edition: education, version: 11, build: "26100" }}
    tpm: {{ family: "2.0", manufacturer: STM, firmware: "1.769" }}
    tpm_access: shell
    shell:
      ssh:
        host: 127.0.0.1
        user: labadmin
        key_file: state/keys/aplab_ed25519
        known_hosts: state/known_hosts
        host_key_policy: strict
    sim: {{ profile: thinkpad-t14 }}
devices:
"""
    ]
    width = len(str(a.n))
    for i in range(1, a.n + 1):
        d = f"pc{i:0{width}d}"
        out.append(
            f"""  - id: {d}
    extends: thinkpad-t14
    serial: PF{i:07d}
    power: {{ redfish: {{ url: http://127.0.0.1:{redfish}, system: {d} }} }}
    console: {{ serial: {{ device: state/devices/{d}/console, baud: 115200 }} }}
    keyboard: {{ ch9329: {{ device: state/devices/{d}/ch9329, baud: 9600 }} }}
    screen: {{ pikvm: {{ url: http://127.0.0.1:{kvm}/{d}, user: admin, password: {{ file: state/secrets/pikvm }} }} }}
    shell: {{ ssh: {{ port: {ports[4 + i - 1]} }} }}
"""
        )
    with open(a.file, "w") as f:
        f.write("".join(out))


if __name__ == "__main__":
    main()
