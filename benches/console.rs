//! Console benchmark: throughput of one port and the cost of `expect` per MB as the
//! stream grows from 1 MB to 100 MB. Run: `cargo bench --bench console` (or
//! `bench/console`). Prints a table; the figures go into README's performance section.
//!
//! Each row streams `size` MB of 80-byte lines through a real PTY pair into a
//! `LinkConsole` (always-on reader, timestamped log on disk, matching window) while one
//! `expect` waits for a marker line at the very end. "matcher" feeds the same bytes
//! to the matching window alone, in 64 KiB chunks with a scan after each, which is what
//! the waiting `expect` does on every wake-up.

use std::io::Write;
use std::time::{Duration, Instant};

use aplab::device::Console;
use aplab::device::console::serial::SerialLink;
use aplab::device::console::{ConsoleSettings, LinkConsole, Window};
use serialport::{SerialPort, TTYPort};

const LINE: usize = 80;

fn lines(total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + LINE);
    let mut n = 0u64;
    while out.len() < total {
        let line = format!(
            "{n:>10} BdsDxe: status 0x00000000 loading Boot0001 \"Windows Boot Manager\" from disk"
        );
        out.extend_from_slice(&line.as_bytes()[..LINE - 1]);
        out.push(b'\n');
        n += 1;
    }
    out
}

/// Seconds for `size` MB to go through the PTY, the reader, the log and one `expect`.
async fn through_pty(size: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (mut master, slave) = TTYPort::pair().expect("a PTY pair");
    let path = slave.name().unwrap();
    let console = LinkConsole::open(
        Box::new(SerialLink::new(path, 115_200)),
        dir.path().join("console.log"),
        ConsoleSettings::default(),
    )
    .unwrap();
    console
        .wait_connected(Duration::from_secs(30))
        .await
        .unwrap();
    let mut data = lines(size << 20);
    data.extend_from_slice(b"Autopilot marker: provisioning complete\n");
    let pattern = [regex::Regex::new(r"marker: (?P<what>provisioning complete)$").unwrap()];
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        master.write_all(&data).unwrap();
        master
    });
    let found = console
        .expect(&pattern, Duration::from_secs(600))
        .await
        .expect("the marker arrives");
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(
        found.offset,
        ((size << 20).div_ceil(LINE) * LINE + 39) as u64
    );
    let _master = writer.join().unwrap();
    drop(slave);
    seconds
}

/// Seconds for the matching window alone to scan `size` MB.
fn matcher(size: usize) -> f64 {
    let data = lines(size << 20);
    let pattern = [regex::bytes::Regex::new(r"marker: (?P<what>provisioning complete)$").unwrap()];
    let mut window = Window::new(1 << 20, 4096);
    let mut cursor = 0;
    let start = Instant::now();
    for chunk in data.chunks(64 << 10) {
        window.push(chunk);
        assert!(window.scan(&pattern, &mut cursor).is_none());
    }
    window.push(b"Autopilot marker: provisioning complete\n");
    assert!(window.scan(&pattern, &mut cursor).is_some());
    start.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("console benchmark: 80-byte lines, one pattern, timestamped log on disk");
    println!(
        "{:>8} {:>12} {:>10} {:>14} {:>18}",
        "size MB", "PTY seconds", "PTY MB/s", "PTY ms per MB", "matcher ms per MB"
    );
    // Sizes in MB may be given as arguments (cargo bench adds `--bench`, skipped).
    let mut sizes: Vec<usize> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![1, 10, 100];
    }
    for size in sizes {
        let pty = runtime.block_on(through_pty(size));
        let scan = matcher(size);
        println!(
            "{:>8} {:>12.3} {:>10.1} {:>14.2} {:>18.3}",
            size,
            pty,
            size as f64 / pty,
            pty * 1000.0 / size as f64,
            scan * 1000.0 / size as f64
        );
    }
}
