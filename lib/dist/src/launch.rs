//! Who am I in the job: rank, local rank, world size and the rendezvous address, from Slurm
//! (`srun`, one task per GPU), from torchrun-style variables, or a single process by default.

use openseek_common::Failure;

use crate::hostlist;

/// Where the rank information came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (torchrun and friends).
    Torchrun,
    /// A task of an `srun` step: `SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_STEP_NUM_TASKS`/`SLURM_NTASKS`.
    Slurm,
    /// None of the above: one process, world size 1.
    Single,
}

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub local_rank: usize,
    pub world: usize,
    /// The host rank 0 runs on (where the rendezvous store listens).
    pub master_addr: String,
    pub master_port: u16,
    /// This host's name, for messages.
    pub host: String,
    pub source: Source,
}

/// The port used when `MASTER_PORT` is not set: derived from the Slurm job id, or this.
pub const DEFAULT_PORT: u16 = 29500;

impl Launch {
    /// From the process environment.
    pub fn from_env() -> Result<Launch, Failure> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// One process alone (world size 1).
    pub fn single() -> Launch {
        Launch {
            rank: 0,
            local_rank: 0,
            world: 1,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_PORT,
            host: hostname(),
            source: Source::Single,
        }
    }

    /// From any variable lookup (tests pass a map). Torchrun-style variables win over Slurm's
    /// (a launcher inside an allocation sets its own); Slurm's count only inside an `srun` step
    /// (`SLURM_STEP_ID` set), so a batch script running the trainer directly is one process.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Launch, Failure> {
        let num = |name: &str| -> Result<Option<usize>, Failure> {
            match var(name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Failure::config(format!("environment variable {name}={v:?} is not a non-negative integer"))
                }),
            }
        };
        let port_var = || -> Result<Option<u16>, Failure> {
            match var("MASTER_PORT") {
                None => Ok(None),
                Some(v) => v.trim().parse::<u16>().ok().filter(|p| *p > 0).map(Some).ok_or_else(|| {
                    Failure::config(format!("environment variable MASTER_PORT={v:?} is not a port number (1-65535)"))
                }),
            }
        };
        let host = hostname();
        let launch = if let (Some(rank), Some(world)) = (num("RANK")?, num("WORLD_SIZE")?) {
            Launch {
                rank,
                local_rank: num("LOCAL_RANK")?.unwrap_or(0),
                world,
                master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port: port_var()?.unwrap_or(DEFAULT_PORT),
                host,
                source: Source::Torchrun,
            }
        } else if let (Some(rank), Some(_step)) = (num("SLURM_PROCID")?, var("SLURM_STEP_ID")) {
            let world = match num("SLURM_STEP_NUM_TASKS")? {
                Some(n) => n,
                None => num("SLURM_NTASKS")?.ok_or_else(|| Failure::config("SLURM_PROCID is set but SLURM_NTASKS is not"))?,
            };
            let nodes_var = ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"]
                .into_iter()
                .find_map(|k| var(k).map(|v| (k, v)));
            let master_addr = match (var("MASTER_ADDR"), nodes_var) {
                (Some(addr), _) => addr,
                (None, Some((name, list))) => hostlist::expand(&list)
                    .map_err(|e| Failure::config(format!("{name}: {}", e.message)))?
                    .into_iter()
                    .next()
                    .expect("a parsed host list has a host"),
                (None, None) => return Err(Failure::config("SLURM_PROCID is set but no SLURM_JOB_NODELIST (and no MASTER_ADDR)")),
            };
            let master_port = match (port_var()?, num("SLURM_JOB_ID")?) {
                (Some(p), _) => p,
                (None, Some(job)) => port_from_job_id(job),
                (None, None) => DEFAULT_PORT,
            };
            Launch {
                rank,
                local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
                world,
                master_addr,
                master_port,
                host,
                source: Source::Slurm,
            }
        } else {
            Launch::single()
        };
        if launch.world == 0 || launch.rank >= launch.world {
            return Err(Failure::config(format!(
                "rank {} is not below the world size {} ({:?} launch variables)",
                launch.rank, launch.world, launch.source
            )));
        }
        Ok(launch)
    }

    /// `rank 3/8 on node07`: how messages name this process.
    pub fn who(&self) -> String {
        format!("rank {}/{} on {}", self.rank, self.world, self.host)
    }
}

/// A port in 15000..=24999 from the job id, so concurrent jobs on shared nodes rarely collide.
pub fn port_from_job_id(job_id: usize) -> u16 {
    15000 + (job_id % 10000) as u16
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch, Failure> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_one_process() {
        let l = launch(&[]).unwrap();
        assert_eq!((l.rank, l.world, l.source), (0, 1, Source::Single));
    }

    #[test]
    fn slurm_step_master_is_the_first_host_and_port_comes_from_the_job() {
        let l = launch(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_JOB_ID", "123456"),
            ("SLURM_JOB_NODELIST", "gpu[07-10]"),
        ])
        .unwrap();
        assert_eq!((l.rank, l.local_rank, l.world), (5, 1, 8));
        assert_eq!(l.master_addr, "gpu07");
        assert_eq!(l.master_port, 15000 + 3456);
        assert_eq!(l.source, Source::Slurm);
    }

    #[test]
    fn slurm_step_values_win_and_master_port_overrides() {
        let l = launch(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_STEP_NUM_TASKS", "2"),
            ("SLURM_STEP_ID", "3"),
            ("SLURM_JOB_ID", "77"),
            ("SLURM_JOB_NODELIST", "a[1-4]"),
            ("SLURM_STEP_NODELIST", "a[3-4]"),
            ("MASTER_PORT", "40000"),
        ])
        .unwrap();
        assert_eq!((l.world, l.master_addr.as_str(), l.master_port), (2, "a3", 40000));
    }

    #[test]
    fn a_batch_script_outside_a_step_is_one_process() {
        let l = launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8"), ("SLURM_JOB_NODELIST", "n1")]).unwrap();
        assert_eq!((l.world, l.source), (1, Source::Single));
    }

    #[test]
    fn torchrun_variables_win_over_slurm() {
        let l = launch(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "2"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29400"),
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_NTASKS", "1"),
        ])
        .unwrap();
        assert_eq!((l.rank, l.local_rank, l.world), (2, 2, 4));
        assert_eq!((l.master_addr.as_str(), l.master_port, l.source), ("10.0.0.1", 29400, Source::Torchrun));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.message.contains("RANK=\"x\""), "{}", e.message);
        let e = launch(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.message.contains("rank 2 is not below the world size 2"), "{}", e.message);
        let e = launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")]).unwrap_err();
        assert!(e.message.contains("MASTER_PORT"), "{}", e.message);
        let e = launch(&[("SLURM_PROCID", "0"), ("SLURM_STEP_ID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_JOB_NODELIST", "n[2-1]")])
            .unwrap_err();
        assert!(e.message.contains("SLURM_JOB_NODELIST"), "{}", e.message);
    }
}
