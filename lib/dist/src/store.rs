//! A small TCP rendezvous store: rank 0 listens on `MASTER_ADDR:MASTER_PORT`, every rank
//! (rank 0 included) connects with retries until a deadline. Its one operation is a keyed
//! gather: each rank posts a value under a name, and gets back every rank's value in rank order
//! once all have posted. Exchanging the NCCL unique id, barriers and agreeing on small values
//! ("stop requested" on any rank -> every rank stops at the same step) are built on it.
//! Timeouts give an error naming this rank, its host, the operation and the ranks not yet there.
//! A stop signal (TERM, USR1, INT: `openseek_common::signals`) during the rendezvous (connecting
//! and the first barrier) ends the wait within a fraction of a second with `TempFail` (exit 75),
//! so a job cancelled while its ranks gather does not sit out the store's timeout. Later waits
//! are not cut short: a stop signal is then agreed on by all ranks through the store (see
//! `any`) and they checkpoint together. A rank whose connection closes (its process exited on an
//! error, crashed or was killed) is marked as gone: every wait for a value it never posted ends at
//! once with an error naming it, instead of sitting out the timeout; [`leave`] lets a rank that
//! fails say why first, also before it joined the rendezvous.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use openseek_common::{ExitCode, Failure};

use crate::launch::Launch;

const OP_GATHER: u8 = 1;
const OP_MISSING: u8 = 2;
const OP_LEAVE: u8 = 3;

/// How often a waiting rank looks for a stop signal.
const POLL: Duration = Duration::from_millis(200);

/// What a gather got from the server.
enum Answer {
    Values(Vec<Vec<u8>>),
    Refused(String),
    /// A stop signal came while waiting for the other ranks.
    Stopped(&'static str),
}

/// The client every rank holds (rank 0 also runs the server).
pub struct Store {
    who: String,
    rank: usize,
    world: usize,
    addr: String,
    /// Where this client connects (rank 0: the loopback address of its own server).
    target: String,
    timeout: Duration,
    conn: Mutex<Option<Conn>>,
    seq: Mutex<u64>,
    server: Option<Arc<Shared>>,
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Store {
    /// Rendezvous with every rank of `launch`: rank 0 starts the server; everyone connects, retrying
    /// until `timeout`, which also bounds every later operation. World size 1 needs no network.
    pub fn connect(launch: &Launch, timeout: Duration) -> Result<Store, Failure> {
        let addr = format!("{}:{}", launch.master_addr, launch.master_port);
        let mut store = Store {
            who: launch.who(),
            rank: launch.rank,
            world: launch.world,
            addr: addr.clone(),
            target: String::new(),
            timeout,
            conn: Mutex::new(None),
            seq: Mutex::new(0),
            server: None,
        };
        if launch.world == 1 {
            return Ok(store);
        }
        store.target = if launch.rank == 0 {
            store.server = Some(serve(launch.master_port).map_err(|e| {
                unavailable(format!(
                    "{}: cannot listen on port {} for the rendezvous store: {e} (set MASTER_PORT to a free port)",
                    store.who, launch.master_port
                ))
            })?);
            format!("127.0.0.1:{}", launch.master_port)
        } else {
            addr.clone()
        };
        let deadline = Instant::now() + timeout;
        let mut last_error;
        let stream = loop {
            match connect_once(&store.target) {
                Ok(s) => break s,
                Err(e) => last_error = e.to_string(),
            }
            if let Some(signal) = openseek_common::signals::received() {
                return Err(stopped(&store.who, signal, &format!("trying to reach the rendezvous store at {addr}")));
            }
            if Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "{}: could not reach the rendezvous store at {addr} within {} s (last error: {last_error}); \
                     is rank 0 running, and are MASTER_ADDR/MASTER_PORT right?",
                    store.who,
                    timeout.as_secs_f64()
                )));
            }
            thread::sleep(POLL);
        };
        stream.set_nodelay(true).ok();
        let reader = BufReader::new(stream.try_clone().map_err(|e| unavailable(format!("{}: store socket: {e}", store.who)))?);
        *store.conn.get_mut().unwrap() = Some(Conn { reader, writer: BufWriter::new(stream) });
        // Everyone is connected once this returns.
        store.gather_until("connect", &[], true)?;
        Ok(store)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Every rank's `value` for the operation `name`, in rank order. Every rank must call the
    /// store's operations in the same order (a sequence number tells rounds apart).
    pub fn gather(&self, name: &str, value: &[u8]) -> Result<Vec<Vec<u8>>, Failure> {
        self.gather_until(name, value, false)
    }

    /// [`Store::gather`]; with `interruptible`, a stop signal ends the wait (the rendezvous).
    fn gather_until(&self, name: &str, value: &[u8], interruptible: bool) -> Result<Vec<Vec<u8>>, Failure> {
        let seq = {
            let mut s = self.seq.lock().unwrap();
            *s += 1;
            *s
        };
        if self.world == 1 {
            return Ok(vec![value.to_vec()]);
        }
        let key = format!("{name}#{seq}");
        let mut guard = self.conn.lock().unwrap();
        let conn = guard.as_mut().ok_or_else(|| unavailable(format!("{}: the store connection was lost earlier", self.who)))?;
        let result = (|| -> std::io::Result<Answer> {
            conn.writer.write_all(&[OP_GATHER])?;
            write_bytes(&mut conn.writer, key.as_bytes())?;
            write_u32(&mut conn.writer, self.rank as u32)?;
            write_u32(&mut conn.writer, self.world as u32)?;
            write_bytes(&mut conn.writer, value)?;
            conn.writer.flush()?;
            // The answer's first byte comes once every rank has posted: wait for it in short
            // reads, looking for a stop signal between them.
            conn.reader.get_ref().set_read_timeout(Some(POLL))?;
            let deadline = Instant::now() + self.timeout;
            let mut status = [0u8];
            loop {
                match conn.reader.read(&mut status) {
                    Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                    Ok(_) => break,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                        if let Some(signal) = openseek_common::signals::received().filter(|_| interruptible) {
                            return Ok(Answer::Stopped(signal));
                        }
                        if Instant::now() >= deadline {
                            return Err(ErrorKind::TimedOut.into());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            conn.reader.get_ref().set_read_timeout(Some(self.timeout))?;
            if status[0] != 0 {
                return Ok(Answer::Refused(String::from_utf8_lossy(&read_bytes(&mut conn.reader)?).into_owned()));
            }
            let n = read_u32(&mut conn.reader)? as usize;
            (0..n).map(|_| read_bytes(&mut conn.reader)).collect::<std::io::Result<Vec<_>>>().map(Answer::Values)
        })();
        match result {
            Ok(Answer::Values(values)) => Ok(values),
            Ok(Answer::Refused(why)) => {
                // A rank that left on the same stop signal as this one (a cancelled job) is a stop,
                // not a failure: give this rank's own signal a moment to arrive.
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    if let Some(signal) = openseek_common::signals::received() {
                        return Err(stopped(&self.who, signal, &format!("in store operation '{name}' ({why})")));
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                Err(unavailable(format!("{}: store operation '{name}' refused: {why}", self.who)))
            }
            Ok(Answer::Stopped(signal)) => {
                *guard = None; // the answer may still come: the stream is out of step
                let missing = self.missing(&key).map(|m| format!(" for rank(s) {m:?}")).unwrap_or_default();
                Err(stopped(&self.who, signal, &format!("waiting{missing} in store operation '{name}' (store at {})", self.addr)))
            }
            Err(e) => {
                *guard = None; // the stream is out of step now
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                    let missing = self.missing(&key).map(|m| format!("waiting for rank(s) {m:?}")).unwrap_or_else(|e| e);
                    Err(unavailable(format!(
                        "{}: store operation '{name}' (round {seq}) timed out after {} s, {missing} (store at {})",
                        self.who,
                        self.timeout.as_secs_f64(),
                        self.addr
                    )))
                } else {
                    Err(unavailable(format!(
                        "{}: lost the rendezvous store at {} during '{name}': {e} (did rank 0 exit?)",
                        self.who, self.addr
                    )))
                }
            }
        }
    }

    /// Which ranks have not posted `key` yet (asked on a fresh connection after a timeout).
    fn missing(&self, key: &str) -> Result<Vec<u32>, String> {
        let ask = || -> std::io::Result<Vec<u32>> {
            let mut s = connect_once(&self.target)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut w = BufWriter::new(s.try_clone()?);
            w.write_all(&[OP_MISSING])?;
            write_bytes(&mut w, key.as_bytes())?;
            write_u32(&mut w, self.world as u32)?;
            w.flush()?;
            let n = read_u32(&mut s)?;
            (0..n).map(|_| read_u32(&mut s)).collect()
        };
        ask().map_err(|e| format!("the store did not say who is missing ({e})"))
    }

    /// Wait until every rank reaches this point.
    pub fn barrier(&self, name: &str) -> Result<(), Failure> {
        self.gather(name, &[]).map(|_| ())
    }

    /// `root`'s value on every rank (other ranks' `value` is ignored).
    pub fn broadcast(&self, name: &str, root: usize, value: &[u8]) -> Result<Vec<u8>, Failure> {
        let mine = if self.rank == root { value } else { &[] };
        Ok(self.gather(name, mine)?.swap_remove(root))
    }

    /// True on every rank if `flag` is true on any rank (e.g. a stop signal seen by one rank).
    pub fn any(&self, name: &str, flag: bool) -> Result<bool, Failure> {
        Ok(self.gather(name, &[flag as u8])?.iter().any(|v| v.first() == Some(&1)))
    }

    /// The largest of every rank's `value`.
    pub fn max_u64(&self, name: &str, value: u64) -> Result<u64, Failure> {
        let all = self.gather(name, &value.to_le_bytes())?;
        Ok(all.iter().map(|v| u64::from_le_bytes(v[..8].try_into().unwrap())).max().unwrap())
    }
}

impl Drop for Store {
    /// Rank 0 keeps the process (and so the server) alive until the answers of completed rounds are
    /// sent, so the last barrier of a job does not fail on the other ranks.
    fn drop(&mut self) {
        if let Some(shared) = &self.server {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut state = shared.state.lock().unwrap();
            while state.unsent > 0 && Instant::now() < deadline {
                state = shared.changed.wait_timeout(state, Duration::from_millis(50)).unwrap().0;
            }
        }
    }
}

fn unavailable(message: String) -> Failure {
    Failure::new(ExitCode::Unavailable, message)
}

fn stopped(who: &str, signal: &str, doing: &str) -> Failure {
    Failure::new(ExitCode::TempFail, format!("{who}: stopped by {signal} while {doing}; nothing was trained; run again to start"))
}

fn connect_once(target: &str) -> std::io::Result<TcpStream> {
    let addr = target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(ErrorKind::NotFound, format!("{target} resolves to no address")))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}

// ---- the server (rank 0) ----

struct Round {
    values: Vec<Option<Vec<u8>>>,
    arrived: usize,
    /// Connections that still have to read the completed round.
    readers: usize,
}

#[derive(Default)]
struct State {
    rounds: HashMap<String, Round>,
    /// Answers of completed rounds not yet written to their connection.
    unsent: usize,
    /// Ranks whose connection closed or that said they leave (with why, when they said):
    /// what they have not posted will never come.
    gone: Vec<(usize, String)>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

fn serve(port: u16) -> std::io::Result<Arc<Shared>> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    let shared = Arc::new(Shared { state: Mutex::new(State::default()), changed: Condvar::new() });
    let s = shared.clone();
    thread::Builder::new().name("store-server".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let s = s.clone();
            thread::spawn(move || {
                let mut rank = None;
                let _ = handle(stream, &s, &mut rank);
                if let Some(r) = rank {
                    mark_gone(&s, r, String::new());
                }
            });
        }
    })?;
    Ok(shared)
}

/// Serve one client connection until it closes; `rank` is set once it says which rank it is.
fn handle(stream: TcpStream, shared: &Shared, rank_of_client: &mut Option<usize>) -> std::io::Result<()> {
    stream.set_nodelay(true).ok();
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    loop {
        let mut op = [0u8];
        if reader.read_exact(&mut op).is_err() {
            return Ok(()); // the client hung up
        }
        let key = String::from_utf8_lossy(&read_bytes(&mut reader)?).into_owned();
        match op[0] {
            OP_GATHER => {
                let rank = read_u32(&mut reader)? as usize;
                let world = read_u32(&mut reader)? as usize;
                let value = read_bytes(&mut reader)?;
                *rank_of_client = Some(rank);
                match gather_round(shared, &key, rank, world, value) {
                    Ok(values) => {
                        let sent = (|| {
                            writer.write_all(&[0])?;
                            write_u32(&mut writer, values.len() as u32)?;
                            values.iter().try_for_each(|v| write_bytes(&mut writer, v))?;
                            writer.flush()
                        })();
                        shared.state.lock().unwrap().unsent -= 1;
                        shared.changed.notify_all();
                        sent?;
                    }
                    Err(why) => {
                        writer.write_all(&[1])?;
                        write_bytes(&mut writer, why.as_bytes())?;
                        writer.flush()?;
                    }
                }
            }
            OP_MISSING => {
                let world = read_u32(&mut reader)? as usize;
                let state = shared.state.lock().unwrap();
                let missing: Vec<u32> = match state.rounds.get(&key) {
                    Some(round) => (0..round.values.len()).filter(|&r| round.values[r].is_none()).map(|r| r as u32).collect(),
                    None => (0..world as u32).collect(),
                };
                drop(state);
                write_u32(&mut writer, missing.len() as u32)?;
                missing.iter().try_for_each(|r| write_u32(&mut writer, *r))?;
                writer.flush()?;
            }
            OP_LEAVE => {
                let rank = read_u32(&mut reader)? as usize;
                mark_gone(shared, rank, key);
                writer.write_all(&[0])?;
                writer.flush()?;
            }
            other => return Err(std::io::Error::new(ErrorKind::InvalidData, format!("unknown store op {other}"))),
        }
    }
}

/// Record that `rank` is gone (`why` empty: its connection closed) and wake every wait.
fn mark_gone(shared: &Shared, rank: usize, why: String) {
    let mut state = shared.state.lock().unwrap();
    match state.gone.iter_mut().find(|(r, _)| *r == rank) {
        Some((_, known)) if known.is_empty() => *known = why,
        Some(_) => {}
        None => state.gone.push((rank, why)),
    }
    drop(state);
    shared.changed.notify_all();
}

/// Tell the job's store that this rank leaves — its process is about to exit on `why` — so the
/// other ranks' waits for it end at once naming the reason, also when it fails before joining
/// the rendezvous. Best effort, for ranks other than 0 (rank 0's exit ends the store, which the
/// others see at once): tries to reach the store for a few seconds; a world of one has none.
pub fn leave(launch: &Launch, why: &str) {
    if launch.world == 1 || launch.rank == 0 {
        return;
    }
    let target = format!("{}:{}", launch.master_addr, launch.master_port);
    let deadline = Instant::now() + Duration::from_secs(5);
    let say = || -> std::io::Result<()> {
        let mut s = connect_once(&target)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut w = BufWriter::new(s.try_clone()?);
        w.write_all(&[OP_LEAVE])?;
        write_bytes(&mut w, why.as_bytes())?;
        write_u32(&mut w, launch.rank as u32)?;
        w.flush()?;
        s.read_exact(&mut [0u8])
    };
    while say().is_err() && Instant::now() < deadline {
        thread::sleep(POLL);
    }
}

/// Post `value` for `rank` and wait until all `world` ranks have posted.
fn gather_round(shared: &Shared, key: &str, rank: usize, world: usize, value: Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
    let mut state = shared.state.lock().unwrap();
    let round = state
        .rounds
        .entry(key.to_string())
        .or_insert_with(|| Round { values: vec![None; world], arrived: 0, readers: world });
    if round.values.len() != world {
        return Err(format!("rank {rank} says the world size is {world}, an earlier rank said {}", round.values.len()));
    }
    if rank >= world || round.values[rank].is_some() {
        return Err(format!("rank {rank} posted '{key}' twice or is out of range"));
    }
    round.values[rank] = Some(value);
    round.arrived += 1;
    if round.arrived == world {
        state.unsent += world;
        shared.changed.notify_all();
    }
    loop {
        let State { rounds, gone, .. } = &mut *state;
        let round = rounds.get_mut(key).expect("a round lives until all its readers are done");
        if let Some((r, why)) = gone.iter().find(|(r, _)| *r < world && round.values[*r].is_none()) {
            return Err(match why.is_empty() {
                true => format!("rank {r} left the job before posting it (its process exited, crashed or was killed: its own log says why)"),
                false => format!("rank {r} left the job before posting it: {why}"),
            });
        }
        if round.arrived == world {
            let values = round.values.iter().map(|v| v.clone().unwrap()).collect();
            round.readers -= 1;
            if round.readers == 0 {
                rounds.remove(key);
            }
            return Ok(values);
        }
        state = shared.changed.wait(state).unwrap();
    }
}

fn write_u32(w: &mut impl Write, v: u32) -> std::io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn write_bytes(w: &mut impl Write, v: &[u8]) -> std::io::Result<()> {
    w.write_all(&(v.len() as u64).to_le_bytes())?;
    w.write_all(v)
}

fn read_bytes(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    let mut v = vec![0u8; u64::from_le_bytes(b) as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::Source;

    fn launch(rank: usize, world: usize, port: u16) -> Launch {
        Launch {
            rank,
            local_rank: rank,
            world,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            host: "testhost".into(),
            source: Source::Torchrun,
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Run `f(store)` on `world` threads, one per rank, each with its own connected store.
    fn ranks<T: Send + 'static>(world: usize, timeout: Duration, f: impl Fn(Store) -> T + Send + Sync + 'static) -> Vec<T> {
        let port = free_port();
        let f = Arc::new(f);
        let handles: Vec<_> = (0..world)
            .map(|r| {
                let f = f.clone();
                thread::spawn(move || f(Store::connect(&launch(r, world, port), timeout).unwrap()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn gather_returns_every_value_in_rank_order_round_after_round() {
        let out = ranks(4, Duration::from_secs(20), |s| {
            let mut seen = Vec::new();
            for round in 0..50u8 {
                let v = s.gather("g", &[s.rank() as u8, round]).unwrap();
                seen.push(v);
            }
            seen
        });
        for per_rank in &out {
            for (round, v) in per_rank.iter().enumerate() {
                assert_eq!(v, &(0..4u8).map(|r| vec![r, round as u8]).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn agreement_helpers() {
        let out = ranks(3, Duration::from_secs(20), |s| {
            let stop_none = s.any("stop", false).unwrap();
            let stop_one = s.any("stop", s.rank() == 2).unwrap();
            let max = s.max_u64("step", 10 * s.rank() as u64 + 1).unwrap();
            let b = s.broadcast("id", 0, if s.rank() == 0 { b"unique-id" } else { b"ignored" }).unwrap();
            s.barrier("end").unwrap();
            (stop_none, stop_one, max, b)
        });
        for o in out {
            assert_eq!(o, (false, true, 21, b"unique-id".to_vec()));
        }
    }

    #[test]
    fn world_of_one_needs_no_server() {
        let s = Store::connect(&launch(0, 1, 1), Duration::from_secs(1)).unwrap();
        assert_eq!(s.gather("x", b"v").unwrap(), vec![b"v".to_vec()]);
        assert!(s.any("stop", true).unwrap());
    }

    #[test]
    fn a_missing_rank_times_out_naming_rank_host_operation_and_who_is_missing() {
        let port = free_port();
        let (r0, r1) = (launch(0, 3, port), launch(1, 3, port));
        let t = Duration::from_millis(1500);
        let h1 = thread::spawn(move || Store::connect(&r1, t).err().map(|e| e.message));
        let e0 = Store::connect(&r0, t).err().expect("rank 2 never came").message;
        let e1 = h1.join().unwrap().expect("rank 2 never came");
        assert!(e0.contains("rank 0/3 on testhost") && e0.contains("'connect'") && e0.contains("[2]"), "{e0}");
        assert!(e1.contains("rank 1/3 on testhost") && e1.contains("timed out"), "{e1}");
    }

    /// A rank that exits while the others wait for it ends their wait at once (not at the
    /// timeout), naming it; a rank that leaves after posting everything harms nobody.
    #[test]
    fn a_rank_that_leaves_ends_the_others_wait_naming_it() {
        let started = Instant::now();
        let out = ranks(3, Duration::from_secs(60), |s| {
            s.barrier("all three").unwrap();
            if s.rank() == 2 {
                return None; // the store drops: rank 2's process is gone
            }
            Some(s.barrier("rank 2 never comes").unwrap_err())
        });
        assert!(started.elapsed() < Duration::from_secs(20), "waited {:?}", started.elapsed());
        for e in out.into_iter().flatten() {
            assert_eq!(e.code, ExitCode::Unavailable);
            assert!(e.message.contains("'rank 2 never comes'") && e.message.contains("rank 2 left the job"), "{}", e.message);
        }
        let out = ranks(2, Duration::from_secs(60), |s| {
            let v = s.gather("last", &[s.rank() as u8]);
            if s.rank() == 1 {
                return v.map(|_| ());
            }
            thread::sleep(Duration::from_millis(300)); // rank 1 is gone by now
            v.map(|_| ())
        });
        assert!(out.iter().all(|r| r.is_ok()));
    }

    /// A rank that fails before joining says so: the others' rendezvous ends at once with its reason.
    #[test]
    fn a_rank_that_leaves_before_the_rendezvous_says_why() {
        let port = free_port();
        let started = Instant::now();
        let others: Vec<_> = [0usize, 2]
            .into_iter()
            .map(|r| thread::spawn(move || Store::connect(&launch(r, 3, port), Duration::from_secs(60)).err().expect("rank 1 never joins")))
            .collect();
        thread::sleep(Duration::from_millis(300));
        leave(&launch(1, 3, port), "exit 78: lr 0.5 is above the schedule's maximum");
        for h in others {
            let e = h.join().unwrap();
            assert!(e.message.contains("rank 1 left the job before posting it: exit 78: lr 0.5"), "{}", e.message);
        }
        assert!(started.elapsed() < Duration::from_secs(20), "waited {:?}", started.elapsed());
    }

    #[test]
    fn no_rank_zero_gives_an_error_naming_the_address() {
        let port = free_port();
        let e = Store::connect(&launch(1, 2, port), Duration::from_millis(600)).err().unwrap();
        assert!(e.message.contains("rank 1/2 on testhost") && e.message.contains(&format!("127.0.0.1:{port}")), "{}", e.message);
        assert_eq!(e.code, ExitCode::Unavailable);
    }
}
