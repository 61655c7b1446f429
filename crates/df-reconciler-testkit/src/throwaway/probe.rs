//! Ports, deadlines, the server log, and a readiness probe that speaks just enough of
//! the PostgreSQL protocol to tell "accepting sessions" from "starting up".

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use super::{io_context, ThrowawayError, LOG_TAIL_BYTES, PROBE_TIMEOUT, SUPERUSER};

/// A port that was free a moment ago. The listener is dropped before postgres binds, so
/// another process can take it in between; `launch` retries on a failed bind.
pub(super) fn free_port() -> Result<u16, ThrowawayError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_context("cannot find a free port on 127.0.0.1"))
}

pub(super) fn wait_with_deadline(
    child: &mut Child,
    timeout: Duration,
) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The end of the log from `offset` on, at most `LOG_TAIL_BYTES`, starting at a line.
pub(super) fn read_log_tail(path: &Path, offset: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = offset.max(len.saturating_sub(LOG_TAIL_BYTES));
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if start > offset {
            if let Some(newline) = text.find('\n') {
                text.drain(..=newline);
            }
        }
        Ok(text)
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// Whether a session starts: sends a protocol 3.0 startup packet (user and database
/// `postgres`, trust authentication) and reads until ReadyForQuery. Unlike a bare TCP
/// connect, this sees "the database system is starting up" and crash recovery.
pub(super) fn probe_session(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream =
        TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)))
        .and_then(|()| stream.write_all(&startup_packet(SUPERUSER, "postgres")))
        .map_err(|e| format!("send startup packet: {e}"))?;
    loop {
        let mut header = [0u8; 5];
        stream
            .read_exact(&mut header)
            .map_err(|e| format!("read: {e}"))?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let body_len = len
            .checked_sub(4)
            .filter(|n| *n <= 64 * 1024)
            .ok_or_else(|| format!("malformed message length {len}"))?;
        let mut body = vec![0; body_len];
        stream
            .read_exact(&mut body)
            .map_err(|e| format!("read: {e}"))?;
        match header[0] {
            b'Z' => {
                // Terminate, so the server does not log an unexpected EOF.
                let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
                return Ok(());
            }
            b'E' => return Err(describe_error_response(&body)),
            b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                return Err(
                    "the server asks for a password; trust authentication expected".to_owned(),
                )
            }
            // AuthenticationOk, ParameterStatus, BackendKeyData, NoticeResponse.
            _ => {}
        }
    }
}

pub(super) fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    const PROTOCOL_3_0: u32 = 3 << 16;
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (key, value) in [("user", user), ("database", database)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// ErrorResponse fields are (type byte, NUL-terminated text); S is the severity, C the
/// SQLSTATE, M the message.
pub(super) fn describe_error_response(body: &[u8]) -> String {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    for field in body.split(|byte| *byte == 0) {
        if let Some((kind, text)) = field.split_first() {
            let text = String::from_utf8_lossy(text).into_owned();
            match kind {
                b'S' => severity = text,
                b'C' => code = text,
                b'M' => message = text,
                _ => {}
            }
        }
    }
    format!("{severity}: {message} (SQLSTATE {code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one connection of a fake server that answers the startup packet with
    /// `reply`, and returns what the probe made of it.
    fn probe_against(reply: Vec<u8>) -> Result<(), String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).unwrap();
            let mut startup = vec![0; u32::from_be_bytes(len) as usize - 4];
            stream.read_exact(&mut startup).unwrap();
            assert_eq!(&startup[..4], &(3u32 << 16).to_be_bytes());
            stream.write_all(&reply).unwrap();
        });
        let result = probe_session(port);
        server.join().unwrap();
        result
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn probe_accepts_ready_for_query() {
        let mut reply = message(b'R', &[0, 0, 0, 0]);
        reply.extend(message(b'S', b"server_version\x0015.0\x00"));
        reply.extend(message(b'K', &[0; 8]));
        reply.extend(message(b'Z', b"I"));
        assert_eq!(probe_against(reply), Ok(()));
    }

    #[test]
    fn probe_reports_a_server_still_starting() {
        let reply = message(
            b'E',
            b"SFATAL\x00C57P03\x00Mthe database system is starting up\x00\x00",
        );
        assert_eq!(
            probe_against(reply),
            Err("FATAL: the database system is starting up (SQLSTATE 57P03)".to_owned())
        );
    }
}
