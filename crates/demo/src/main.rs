//! `podsnap-demo-server`: the slow-starting workload podsnap's demo and tests snapshot.
//!
//! Like an inference server loading weights, it first builds a large in-memory state
//! (`--state-mib`, from `--weights FILE` when given, else generated), spending real CPU time on
//! it, and only then serves HTTP on `--port`:
//! - `GET /healthz` — `ok` once the state is built (the readiness probe);
//! - `GET /` — JSON: state size, its checksum, when the state was built, pid and host name;
//! - `GET /infer?x=N` — a value looked up in the state.
//!
//! With `--snapshot-when-ready=true` it asks podsnap for a snapshot (the workload trigger)
//! once its state is built, before it listens.
//!
//! It uses only the standard library (and podsnap's tiny client) and blocking sockets (no epoll), so the checkpoint
//! engines here can save it while it waits for connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Args {
    state_mib: usize,
    port: u16,
    weights: Option<String>,
    passes: u32,
    snapshot: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        state_mib: 256,
        port: 8080,
        weights: None,
        passes: 8,
        snapshot: false,
    };
    for arg in std::env::args().skip(1) {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("unknown argument `{arg}`; use --key=value"))?;
        match key {
            "--state-mib" => {
                args.state_mib = value
                    .parse()
                    .map_err(|_| format!("--state-mib={value}: not a number"))?
            }
            "--port" => {
                args.port = value
                    .parse()
                    .map_err(|_| format!("--port={value}: not a port"))?
            }
            "--weights" => args.weights = Some(value.to_owned()),
            "--passes" => {
                args.passes = value
                    .parse()
                    .map_err(|_| format!("--passes={value}: not a number"))?
            }
            _ => {
                return Err(format!(
                    "unknown argument `{key}`; known: --state-mib, --port, --weights, --passes"
                ));
            }
        }
    }
    Ok(args)
}

/// Builds the state: fills it (from the weights file or a generator), then mixes it in several
/// passes, as a model load does work on every byte. Returns the state and its checksum.
fn build_state(args: &Args) -> std::io::Result<(Vec<u64>, u64)> {
    let words = args.state_mib * (1 << 20) / 8;
    let mut state = vec![0u64; words];
    match &args.weights {
        Some(path) => {
            let mut file = std::fs::File::open(path)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < words {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                for chunk in buf[..n].chunks_exact(8) {
                    if at < words {
                        state[at] = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                        at += 1;
                    }
                }
            }
        }
        None => {
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            for word in state.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *word = x;
            }
        }
    }
    for pass in 0..args.passes {
        let mut carry = u64::from(pass);
        for word in state.iter_mut() {
            carry = carry.rotate_left(5) ^ word.wrapping_mul(0x2545_F491_4F6C_DD1D);
            *word = carry;
        }
    }
    let checksum = state.iter().fold(0u64, |acc, w| acc.rotate_left(1) ^ w);
    Ok((state, checksum))
}

fn respond(mut stream: TcpStream, status: &str, body: &str, content_type: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Exits at SIGTERM, as a server should when its Pod is deleted: as PID 1 of its sandbox it
/// would otherwise ignore the signal, and the Pod would wait out its whole grace period.
fn exit_on_sigterm() {
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    println!("SIGTERM: exiting");
                    std::process::exit(0);
                }
            });
        }
        Err(e) => eprintln!("podsnap-demo-server: cannot handle SIGTERM: {e}"),
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("podsnap-demo-server: {e}");
            std::process::exit(2);
        }
    };
    exit_on_sigterm();
    let started = Instant::now();
    println!("building {} MiB of state", args.state_mib);
    let (state, checksum) = match build_state(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("podsnap-demo-server: cannot load the weights: {e}");
            std::process::exit(1);
        }
    };
    let built_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    println!(
        "state ready in {:.2?} (checksum {checksum:016x})",
        started.elapsed()
    );
    if args.snapshot {
        // The workload trigger: snapshot here, warmed up, before any connection exists.
        match podsnap_client::checkpoint() {
            podsnap_client::Outcome::Restore => println!("restored from a snapshot"),
            podsnap_client::Outcome::Resume => println!("snapshot taken; going on"),
            podsnap_client::Outcome::Error => println!("the snapshot failed; going on"),
            podsnap_client::Outcome::NotUnderPodsnap => println!("not under podsnap; no snapshot"),
        }
    }
    let listener = match TcpListener::bind(("0.0.0.0", args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "podsnap-demo-server: cannot listen on port {}: {e}",
                args.port
            );
            std::process::exit(1);
        }
    };
    println!("serving on port {}", args.port);
    for stream in listener.incoming().flatten() {
        let mut line = String::new();
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => continue,
        });
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        match path
            .split_once('?')
            .map_or((path.as_str(), ""), |(p, q)| (p, q))
        {
            ("/healthz", _) => respond(stream, "200 OK", "ok\n", "text/plain"),
            ("/", _) => {
                let body = format!(
                    "{{\"stateMib\":{},\"checksum\":\"{checksum:016x}\",\"builtAtMs\":{built_at},\"pid\":{},\"hostname\":\"{}\"}}\n",
                    args.state_mib,
                    std::process::id(),
                    hostname.trim()
                );
                respond(stream, "200 OK", &body, "application/json");
            }
            ("/infer", query) => {
                let x: usize = query
                    .strip_prefix("x=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let value = state[x % state.len()];
                respond(
                    stream,
                    "200 OK",
                    &format!("{{\"x\":{x},\"y\":\"{value:016x}\"}}\n"),
                    "application/json",
                );
            }
            _ => respond(stream, "404 Not Found", "not found\n", "text/plain"),
        }
    }
}
