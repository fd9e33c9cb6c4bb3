//! A console over TCP: raw (ser2net `tcp` accepter) or telnet with RFC 2217 (ser2net
//! `telnet(rfc2217)`), which also sets the far serial port's baud rate.
//!
//! Telnet runs in a small task between the socket and the console: it strips IAC
//! sequences (a doubled 0xFF is one data byte), doubles 0xFF on the way out, answers
//! option negotiation, and sends SET-BAUDRATE once the server agrees to COM-PORT-OPTION.
//! It never waits for an option: ser2net 4.3 on a PTY never completes the modem-control
//! negotiation, and data flows regardless.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;

use super::{ConsoleLink, LinkStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn tcp_hint(host: &str, port: u16) -> String {
    format!(
        "check that ser2net (or the console server) runs at {host}:{port} and its serial adapter is connected"
    )
}

/// Raw bytes over TCP.
pub struct TcpLink {
    host: String,
    port: u16,
}

impl TcpLink {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        TcpLink {
            host: host.into(),
            port,
        }
    }
}

#[async_trait]
impl ConsoleLink for TcpLink {
    async fn connect(&self) -> io::Result<Box<dyn LinkStream>> {
        Ok(Box::new(connect_tcp(&self.host, self.port).await?))
    }
    fn describe(&self) -> String {
        format!("tcp {}:{}", self.host, self.port)
    }
    fn hint(&self) -> String {
        tcp_hint(&self.host, self.port)
    }
}

/// Telnet with RFC 2217 COM-PORT-OPTION.
pub struct TelnetLink {
    host: String,
    port: u16,
    baud: u32,
    /// The baud rate the server last confirmed (0: not confirmed).
    confirmed: Arc<AtomicU32>,
}

impl TelnetLink {
    pub fn new(host: impl Into<String>, port: u16, baud: u32) -> Self {
        TelnetLink {
            host: host.into(),
            port,
            baud,
            confirmed: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The baud rate the server confirmed for the current or last session, if any.
    pub fn confirmed_baud(&self) -> Option<u32> {
        match self.confirmed.load(Ordering::Relaxed) {
            0 => None,
            baud => Some(baud),
        }
    }
}

#[async_trait]
impl ConsoleLink for TelnetLink {
    async fn connect(&self) -> io::Result<Box<dyn LinkStream>> {
        let tcp = connect_tcp(&self.host, self.port).await?;
        let (console_end, telnet_end) = tokio::io::duplex(64 << 10);
        self.confirmed.store(0, Ordering::Relaxed);
        tokio::spawn(telnet_session(
            tcp,
            telnet_end,
            Telnet::new(self.baud),
            self.confirmed.clone(),
        ));
        Ok(Box::new(console_end))
    }
    fn describe(&self) -> String {
        format!("telnet/RFC 2217 {}:{}", self.host, self.port)
    }
    fn hint(&self) -> String {
        tcp_hint(&self.host, self.port)
    }
}

/// Pumps bytes between the socket and the console end until either side ends; the
/// console then sees end of stream and reconnects.
async fn telnet_session(
    tcp: TcpStream,
    console: DuplexStream,
    mut telnet: Telnet,
    confirmed: Arc<AtomicU32>,
) {
    let (mut net_rd, mut net_wr) = tcp.into_split();
    let (mut con_rd, mut con_wr) = tokio::io::split(console);
    if net_wr.write_all(&telnet.greeting()).await.is_err() {
        return;
    }
    let mut from_net = vec![0u8; 16 << 10];
    let mut from_console = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            read = net_rd.read(&mut from_net) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                let (data, replies) = telnet.receive(&from_net[..n]);
                if let Some(baud) = telnet.confirmed_baud {
                    confirmed.store(baud, Ordering::Relaxed);
                }
                if !replies.is_empty() && net_wr.write_all(&replies).await.is_err() {
                    return;
                }
                if !data.is_empty() && con_wr.write_all(&data).await.is_err() {
                    return;
                }
            }
            read = con_rd.read(&mut from_console) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if net_wr.write_all(&escape_iac(&from_console[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub const IAC: u8 = 255;
pub const DONT: u8 = 254;
pub const DO: u8 = 253;
pub const WONT: u8 = 252;
pub const WILL: u8 = 251;
pub const SB: u8 = 250;
pub const SE: u8 = 240;
pub const BINARY: u8 = 0;
pub const SUPPRESS_GO_AHEAD: u8 = 3;
pub const COM_PORT_OPTION: u8 = 44;
/// RFC 2217 SET-BAUDRATE; the server answers with this plus 100.
pub const SET_BAUDRATE: u8 = 1;

/// Doubles every 0xFF so it reaches the far side as data.
pub fn escape_iac(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for &b in data {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Iac,
    Verb(u8),
    Sub,
    SubIac,
}

/// The client side of a telnet session with RFC 2217, as a pure byte codec.
#[derive(Debug)]
pub struct Telnet {
    baud: u32,
    state: State,
    sub: Vec<u8>,
    /// Options enabled on our side (we WILL) and the server's (it WILL).
    ours: [bool; 256],
    theirs: [bool; 256],
    /// Options we asked for and whose answer is pending, so the answer gets no reply.
    asked_ours: [bool; 256],
    asked_theirs: [bool; 256],
    /// The baud rate the server reported after SET-BAUDRATE.
    pub confirmed_baud: Option<u32>,
}

impl Telnet {
    pub fn new(baud: u32) -> Self {
        Telnet {
            baud,
            state: State::Data,
            sub: Vec::new(),
            ours: [false; 256],
            theirs: [false; 256],
            asked_ours: [false; 256],
            asked_theirs: [false; 256],
            confirmed_baud: None,
        }
    }

    /// What the client sends first: binary both ways, no go-ahead, COM-PORT-OPTION.
    pub fn greeting(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for opt in [BINARY, SUPPRESS_GO_AHEAD, COM_PORT_OPTION] {
            self.asked_ours[opt as usize] = true;
            out.extend([IAC, WILL, opt]);
        }
        for opt in [BINARY, SUPPRESS_GO_AHEAD] {
            self.asked_theirs[opt as usize] = true;
            out.extend([IAC, DO, opt]);
        }
        out
    }

    /// Decodes bytes from the server: returns the data bytes and the replies to send.
    pub fn receive(&mut self, bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut data = Vec::with_capacity(bytes.len());
        let mut replies = Vec::new();
        for &b in bytes {
            self.state = match (self.state, b) {
                (State::Data, IAC) => State::Iac,
                (State::Data, b) => {
                    data.push(b);
                    State::Data
                }
                (State::Iac, IAC) => {
                    data.push(IAC);
                    State::Data
                }
                (State::Iac, WILL | WONT | DO | DONT) => State::Verb(b),
                (State::Iac, SB) => {
                    self.sub.clear();
                    State::Sub
                }
                // NOP, GA, AYT and friends carry nothing for a console.
                (State::Iac, _) => State::Data,
                (State::Verb(verb), opt) => {
                    self.negotiate(verb, opt, &mut replies);
                    State::Data
                }
                (State::Sub, IAC) => State::SubIac,
                (State::Sub, b) => {
                    // Bounded: nothing RFC 2217 sends is long.
                    if self.sub.len() < 512 {
                        self.sub.push(b);
                    }
                    State::Sub
                }
                (State::SubIac, IAC) => {
                    if self.sub.len() < 512 {
                        self.sub.push(IAC);
                    }
                    State::Sub
                }
                (State::SubIac, SE) => {
                    self.subnegotiation();
                    State::Data
                }
                (State::SubIac, _) => State::Data,
            };
        }
        (data, replies)
    }

    fn negotiate(&mut self, verb: u8, opt: u8, replies: &mut Vec<u8>) {
        let i = opt as usize;
        let asked_ours = std::mem::take(&mut self.asked_ours[i]);
        let asked_theirs = std::mem::take(&mut self.asked_theirs[i]);
        // The server echoing our input back would garble the console: ECHO is refused
        // with everything else not listed here.
        let supported = matches!(opt, BINARY | SUPPRESS_GO_AHEAD | COM_PORT_OPTION);
        // Only a change of state gets a reply, and never the answer to our own request,
        // so negotiation cannot loop.
        match verb {
            DO if !supported => replies.extend([IAC, WONT, opt]),
            DO if !self.ours[i] => {
                self.ours[i] = true;
                if !asked_ours {
                    replies.extend([IAC, WILL, opt]);
                }
                if opt == COM_PORT_OPTION {
                    replies.extend(self.set_baudrate());
                }
            }
            DONT if self.ours[i] || asked_ours => {
                self.ours[i] = false;
                if !asked_ours {
                    replies.extend([IAC, WONT, opt]);
                }
            }
            WILL if !supported => replies.extend([IAC, DONT, opt]),
            WILL if !self.theirs[i] => {
                self.theirs[i] = true;
                if !asked_theirs {
                    replies.extend([IAC, DO, opt]);
                }
            }
            WONT if self.theirs[i] || asked_theirs => {
                self.theirs[i] = false;
                if !asked_theirs {
                    replies.extend([IAC, DONT, opt]);
                }
            }
            _ => {}
        }
    }

    /// `IAC SB COM-PORT-OPTION SET-BAUDRATE <u32 big-endian, IAC doubled> IAC SE`.
    fn set_baudrate(&self) -> Vec<u8> {
        let mut out = vec![IAC, SB, COM_PORT_OPTION, SET_BAUDRATE];
        out.extend(escape_iac(&self.baud.to_be_bytes()));
        out.extend([IAC, SE]);
        out
    }

    fn subnegotiation(&mut self) {
        if let [COM_PORT_OPTION, cmd, value @ ..] = self.sub.as_slice()
            && *cmd == SET_BAUDRATE + 100
            && let Ok(bytes) = <[u8; 4]>::try_from(value)
        {
            self.confirmed_baud = Some(u32::from_be_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubled_iac_is_one_data_byte_and_commands_vanish() {
        let mut t = Telnet::new(115200);
        let (data, replies) = t.receive(&[b'a', IAC, IAC, b'b', IAC, 241, b'c']);
        assert_eq!(data, vec![b'a', 0xFF, b'b', b'c']);
        assert!(replies.is_empty());
        // A sequence split across reads still decodes.
        let (d1, _) = t.receive(&[IAC]);
        let (d2, _) = t.receive(&[IAC, b'z']);
        assert_eq!((d1, d2), (vec![], vec![0xFF, b'z']));
        assert_eq!(escape_iac(&[1, 0xFF, 2]), vec![1, 0xFF, 0xFF, 2]);
    }

    #[test]
    fn com_port_agreed_then_baud_set_and_confirmed() {
        let mut t = Telnet::new(115200);
        let hello = t.greeting();
        assert!(hello.windows(3).any(|w| w == [IAC, WILL, COM_PORT_OPTION]));
        // The answer to our WILL gets no reply but triggers SET-BAUDRATE.
        let (_, replies) = t.receive(&[IAC, DO, COM_PORT_OPTION]);
        assert_eq!(
            replies,
            vec![IAC, SB, 44, 1, 0x00, 0x01, 0xC2, 0x00, IAC, SE]
        );
        // Unknown requests are refused once, not looped on.
        let (_, replies) = t.receive(&[IAC, DO, 5, IAC, WILL, 1]);
        assert_eq!(replies, vec![IAC, WONT, 5, IAC, DONT, 1]);
        let (data, _) = t.receive(&[IAC, SB, 44, 101, 0, 1, 0xC2, 0, IAC, SE, b'x']);
        assert_eq!((data, t.confirmed_baud), (vec![b'x'], Some(115200)));
    }

    #[test]
    fn baud_bytes_equal_to_iac_are_doubled() {
        let t = Telnet::new(0x0000_00FF);
        assert_eq!(
            t.set_baudrate(),
            vec![IAC, SB, 44, 1, 0, 0, 0, IAC, IAC, IAC, SE]
        );
    }
}
