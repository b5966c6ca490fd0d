//! `ThreadedVecEnv`: N envs split over worker threads, each thread owning its envs.
//!
//! The calling thread is worker 0: it sends every other worker its slice of the actions over a
//! crossbeam channel, steps its own slice meanwhile, and gathers the results in env order, so
//! the output is identical to [`SyncVecEnv`](super::SyncVecEnv)'s whatever the number of
//! workers. `workers = 2` therefore uses the caller plus one helper thread: on a 2-core machine
//! nothing waits idle on a core.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvError, Sender, TryRecvError, bounded};

use super::sync::prefix;
use super::{AutoresetMode, Slot, SlotStep, VecEnv, VecStep, check_batch, common_spaces, env_seed};
use crate::{Env, EnvError, Info, Space, Value};

enum Command {
    Reset { seed: Option<u64>, options: Info },
    Step(Vec<Value>),
    Close,
}

enum Reply {
    Reset(Result<Vec<(Value, Info)>, EnvError>),
    Step(Result<Vec<SlotStep>, EnvError>),
}

struct Worker {
    commands: Sender<Command>,
    replies: Receiver<Reply>,
    envs: std::ops::Range<usize>,
    handle: Option<JoinHandle<()>>,
}

/// Steps its envs on `workers` threads (contiguous slices, as even as possible).
pub struct ThreadedVecEnv {
    local: Vec<Slot>,
    workers: Vec<Worker>,
    num_envs: usize,
    observation_space: Space,
    action_space: Space,
    mode: AutoresetMode,
    closed: bool,
}

impl ThreadedVecEnv {
    /// A vector env over `envs` split over `workers` workers (at most one per env): the calling
    /// thread and `workers - 1` helper threads.
    pub fn new(
        envs: Vec<Box<dyn Env>>,
        workers: usize,
        mode: AutoresetMode,
    ) -> Result<Self, EnvError> {
        let (observation_space, action_space) = common_spaces(&envs)?;
        if workers == 0 {
            return Err(EnvError::Other(
                "a threaded vector env needs at least one worker".into(),
            ));
        }
        let num_envs = envs.len();
        let workers = workers.min(num_envs);
        let mut envs = envs.into_iter();
        let mut out = Vec::with_capacity(workers);
        let mut local = Vec::new();
        let mut start = 0;
        for w in 0..workers {
            let count = num_envs / workers + usize::from(w < num_envs % workers);
            let slots: Vec<Slot> = envs
                .by_ref()
                .take(count)
                .map(|env| Slot {
                    env,
                    mode,
                    needs_reset: false,
                })
                .collect();
            if w == 0 {
                local = slots;
                start += count;
                continue;
            }
            let (commands, command_rx) = bounded::<Command>(1);
            let (reply_tx, replies) = bounded::<Reply>(1);
            let first = start;
            let handle = std::thread::Builder::new()
                .name(format!("dreamgym-env-worker-{w}"))
                .spawn(move || worker_loop(slots, first, command_rx, reply_tx))
                .map_err(|e| EnvError::Worker(format!("could not start worker thread: {e}")))?;
            out.push(Worker {
                commands,
                replies,
                envs: start..start + count,
                handle: Some(handle),
            });
            start += count;
        }
        Ok(Self {
            local,
            workers: out,
            num_envs,
            observation_space,
            action_space,
            mode,
            closed: false,
        })
    }

    /// Number of workers, the calling thread included.
    pub fn num_workers(&self) -> usize {
        self.workers.len() + 1
    }

    fn send(&self, w: &Worker, command: Command) -> Result<(), EnvError> {
        w.commands
            .send(command)
            .map_err(|_| EnvError::Worker("a worker thread has stopped (it panicked?)".into()))
    }

    fn receive(&self, w: &Worker) -> Result<Reply, EnvError> {
        recv_spin(&w.replies)
            .map_err(|_| EnvError::Worker("a worker thread has stopped (it panicked?)".into()))
    }
}

/// How long a waiting thread polls before it blocks. Waking a blocked thread costs tens of
/// microseconds on a virtual machine, comparable to stepping a slice of fast envs; a short
/// bounded spin hides it, and the thread still sleeps when nothing comes.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

fn recv_spin<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    let started = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(TryRecvError::Disconnected) => return Err(RecvError),
            Err(TryRecvError::Empty) => {
                if started.elapsed() > SPIN {
                    return rx.recv();
                }
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

fn worker_loop(
    mut slots: Vec<Slot>,
    first: usize,
    commands: Receiver<Command>,
    replies: Sender<Reply>,
) {
    while let Ok(command) = recv_spin(&commands) {
        let reply = match command {
            Command::Reset { seed, options } => Reply::Reset(
                slots
                    .iter_mut()
                    .enumerate()
                    .map(|(k, s)| {
                        s.reset(env_seed(seed, first + k), &options)
                            .map_err(|e| prefix(first + k, e))
                    })
                    .collect(),
            ),
            Command::Step(actions) => Reply::Step(
                slots
                    .iter_mut()
                    .zip(&actions)
                    .enumerate()
                    .map(|(k, (s, a))| s.step(a).map_err(|e| prefix(first + k, e)))
                    .collect(),
            ),
            Command::Close => {
                for s in &mut slots {
                    s.env.close();
                }
                return;
            }
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

impl VecEnv for ThreadedVecEnv {
    fn num_envs(&self) -> usize {
        self.num_envs
    }
    fn single_observation_space(&self) -> &Space {
        &self.observation_space
    }
    fn single_action_space(&self) -> &Space {
        &self.action_space
    }
    fn autoreset_mode(&self) -> AutoresetMode {
        self.mode
    }
    fn reset(
        &mut self,
        seed: Option<u64>,
        options: &Info,
    ) -> Result<(Vec<Value>, Vec<Info>), EnvError> {
        if self.closed {
            return Err(EnvError::Worker("the vector env is closed".into()));
        }
        for w in &self.workers {
            self.send(
                w,
                Command::Reset {
                    seed,
                    options: options.clone(),
                },
            )?;
        }
        let mut obs = Vec::with_capacity(self.num_envs);
        let mut infos = Vec::with_capacity(self.num_envs);
        let mut first_error = None;
        for (i, slot) in self.local.iter_mut().enumerate() {
            match slot.reset(env_seed(seed, i), options) {
                Ok((o, info)) => {
                    obs.push(o);
                    infos.push(info);
                }
                Err(e) => {
                    first_error.get_or_insert(prefix(i, e));
                }
            }
        }
        for w in &self.workers {
            match self.receive(w)? {
                Reply::Reset(Ok(results)) => {
                    for (o, i) in results {
                        obs.push(o);
                        infos.push(i);
                    }
                }
                Reply::Reset(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Reply::Step(_) => return Err(EnvError::Worker("out-of-order reply".into())),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((obs, infos)),
        }
    }
    fn step(&mut self, actions: &[Value]) -> Result<VecStep, EnvError> {
        if self.closed {
            return Err(EnvError::Worker("the vector env is closed".into()));
        }
        check_batch(&self.action_space, self.num_envs, actions)?;
        for w in &self.workers {
            self.send(w, Command::Step(actions[w.envs.clone()].to_vec()))?;
        }
        let mut out = VecStep::with_capacity(self.num_envs);
        let mut first_error = None;
        for (i, (slot, a)) in self.local.iter_mut().zip(actions).enumerate() {
            match slot.step(a) {
                Ok(s) => out.push(s),
                Err(e) => {
                    first_error.get_or_insert(prefix(i, e));
                }
            }
        }
        for w in &self.workers {
            match self.receive(w)? {
                Reply::Step(Ok(results)) => results.into_iter().for_each(|s| out.push(s)),
                Reply::Step(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Reply::Reset(_) => return Err(EnvError::Worker("out-of-order reply".into())),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        for s in &mut self.local {
            s.env.close();
        }
        for w in &mut self.workers {
            let _ = w.commands.send(Command::Close);
            if let Some(h) = w.handle.take() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for ThreadedVecEnv {
    fn drop(&mut self) {
        self.close();
    }
}
