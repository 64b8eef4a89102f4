//! Every figure as independent jobs: plan, run a shard, merge (`noisegeom sweep`, and
//! `noisegeom figure`, which is the one-shard case of the same path).
//!
//! A figure's [`Figure::plan`] lists its jobs, one per run or grid point, each with a
//! stable id. [`Sweep::run_shard`] computes the jobs `i ≡ I (mod N)` and writes each result to
//! `<dir>/jobs/<id>.toml` atomically, so a killed shard leaves only whole files; rerun, it
//! skips a job whose file is whole and was written for the same figure, config, `--quick`
//! and numerics version ([`ENGINE_NUMERICS`], [`Figure::NUMERICS`], and a device backend's
//! [`Kernels::NUMERICS`]), and redoes anything
//! else. The code's git revision is recorded in each job file but is not part of that key,
//! so a commit that does not change what jobs compute keeps every finished job. `merge` reads the job files in plan order and
//! writes the figure's results file and plots. Every job's numbers depend only on the config
//! and the job's index, and the results file holds no clock or host, so the merged file is
//! byte-identical whatever the number of shards. Timings and provenance go to
//! `<name>.env.json` beside it.
//!
//! Job files are TOML, not JSON: Rust's float parser is correctly rounded, so every f64 of a
//! job comes back bit for bit (serde_json's default parser can be one ulp off), and NaN and
//! ±inf survive.

use noisegeom_kernels::Kernels;
use std::path::PathBuf;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{FigureError, Output};

/// The version of the numerics that figure jobs get from the crates below this one (data,
/// models, metrics, train): bump it in any change that alters a number a figure job computes
/// through them (an estimator, an operator's rounding, the training step, a data loader's
/// values), so finished jobs are redone. Refactors, speed-ups that keep the bits, new
/// features, docs and tests leave it. Each figure's own code has [`Figure::NUMERICS`].
pub const ENGINE_NUMERICS: u32 = 3;

/// One independent unit of a figure's work.
#[derive(Clone, Debug, Serialize)]
pub struct JobSpec {
    /// Stable, file-name-safe id (the job's result is `jobs/<id>.toml`).
    pub id: String,
    /// What the job computes, for people.
    pub label: String,
}

/// A figure, split into jobs.
pub trait Figure {
    /// `fig1`, `fig2a`…: the results are `<NAME>.json`, `.png`, `.svg`.
    const NAME: &'static str;
    /// The version of this figure's own numerics (its `plan`, `run_job` and what they
    /// compute): bump it in any change that alters a number its jobs return. With
    /// [`ENGINE_NUMERICS`], the config, `--quick` and the job's id, it decides whether a
    /// finished job is reused.
    const NUMERICS: u32;
    type Config: Serialize + DeserializeOwned;
    /// One job's result.
    type Part: Serialize + DeserializeOwned;

    /// Sets the number of independent runs (`--runs`); a figure without runs refuses.
    fn set_runs(cfg: &mut Self::Config, runs: usize) -> Result<(), FigureError> {
        let _ = (cfg, runs);
        Err(FigureError::Config {
            path: Self::NAME.into(),
            message: "this figure has no independent runs; drop --runs".into(),
        })
    }

    /// The jobs, in a fixed order. Checks the config, so a bad one fails before any work.
    fn plan(cfg: &Self::Config) -> Result<Vec<JobSpec>, FigureError>;

    /// Sets the dataset (`--dataset`, `--data`); a figure on fixed synthetic data refuses.
    fn set_data(
        cfg: &mut Self::Config,
        source: Option<noisegeom_data::Source>,
        dir: Option<PathBuf>,
    ) -> Result<(), FigureError> {
        let _ = (cfg, source, dir);
        Err(FigureError::Config {
            path: Self::NAME.into(),
            message: "this figure runs on its own synthetic data; drop --dataset and --data".into(),
        })
    }

    /// Computes job `index` of the plan. Depends on nothing but `cfg` and `index`. `work`
    /// is a folder of the figure's output where a job may keep resumable state (the
    /// training runs of the network figures), so a killed job continues where it stopped.
    fn run_job<B: Kernels>(
        cfg: &Self::Config,
        index: usize,
        device: &B::Device,
        work: &std::path::Path,
    ) -> Result<Self::Part, FigureError>;

    /// Combines the jobs' results (in plan order): writes the plots, and returns the
    /// results (for the results file) and a readable summary.
    fn merge(
        cfg: &Self::Config,
        parts: Vec<Self::Part>,
        out: &Output,
    ) -> Result<(Value, String), FigureError>;
}

/// The `I/N` of `--shard`: this process runs the jobs whose index is I modulo N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn owns(&self, job: usize) -> bool {
        job % self.count == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("shard `{s}`: expected I/N with 0 ≤ I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// Where and for what the jobs of one figure run.
pub struct Sweep<'a, F: Figure> {
    cfg: &'a F::Config,
    quick: bool,
    out: &'a Output,
    /// Identity of the code computing the jobs (version, git revision, dirty flag), recorded
    /// in each job file for provenance; it does not decide reuse.
    code: String,
    /// `engine.figure` numerics versions: a job file from other numerics is redone.
    numerics: String,
    /// The backend and precision jobs run on: a job file from another backend is redone by
    /// `run_shard` (merge accepts it, and says so).
    backend: String,
    /// The config as JSON: a job is reused only for the identical config.
    config_key: String,
}

/// One job's file: what it was computed for, then its result.
#[derive(Serialize, Deserialize)]
struct JobFile<P> {
    figure: String,
    id: String,
    label: String,
    quick: bool,
    /// The config as JSON: a job is reused only for the identical config.
    config_key: String,
    /// [`ENGINE_NUMERICS`]`.`[`Figure::NUMERICS`] of the code that computed it, then
    /// `.`[`Kernels::NUMERICS`] for a backend with kernels of its own.
    numerics: String,
    /// The code that computed it (provenance only).
    code: String,
    backend: String,
    shard: String,
    seconds: f64,
    /// The process's peak resident memory during the job, in bytes (0 where the system does
    /// not say, and in job files from before it was recorded). Its presence also marks a
    /// file that must carry a checksum.
    #[serde(default)]
    peak_bytes: u64,
    result: P,
}

/// The last line of a job file: the FNV-1a checksum of every byte before it.
const CHECKSUM_PREFIX: &str = "# fnv1a64 ";

/// A job file's bytes: the TOML, then its checksum line.
fn with_checksum(text: &str) -> Vec<u8> {
    let sum = noisegeom_train::fsio::fnv(text.as_bytes());
    format!("{text}{CHECKSUM_PREFIX}{sum:016x}\n").into_bytes()
}

/// The TOML of a job file whose checksum line matches it. Files written before job files
/// carried a checksum (no `peak_bytes`, no checksum line) are taken as they are, so that
/// finished work stays valid; a file that records `peak_bytes` must carry its checksum.
fn verified(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body = text.strip_suffix('\n')?;
    match body.rfind('\n') {
        Some(at) if body[at + 1..].starts_with(CHECKSUM_PREFIX) => {
            let (toml, line) = text.split_at(at + 1);
            let sum = u64::from_str_radix(line.trim_end()[CHECKSUM_PREFIX.len()..].trim(), 16);
            (sum == Ok(noisegeom_train::fsio::fnv(toml.as_bytes()))).then_some(toml)
        }
        _ if !text.contains("\npeak_bytes") && !text.contains("\n#") => Some(text),
        _ => None,
    }
}

/// What [`Sweep::run_shard`] did.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub ran: Vec<String>,
    pub skipped: Vec<String>,
}

/// A job's state in the output folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Done,
    /// A file from another config, `--quick` setting or numerics version, or an unreadable
    /// one.
    Stale,
    Missing,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Done => "done",
            JobState::Stale => "stale",
            JobState::Missing => "missing",
        }
    }
}

impl<'a, F: Figure> Sweep<'a, F> {
    /// A sweep of `F` on the backend named `backend`, whose own kernels' numerics version is
    /// `backend_numerics` ([`Kernels::NUMERICS`]).
    pub fn new(
        cfg: &'a F::Config,
        quick: bool,
        out: &'a Output,
        code: String,
        backend: String,
        backend_numerics: u32,
    ) -> Self {
        let numerics = match backend_numerics {
            0 => format!("{ENGINE_NUMERICS}.{}", F::NUMERICS),
            v => format!("{ENGINE_NUMERICS}.{}.{v}", F::NUMERICS),
        };
        Sweep {
            cfg,
            quick,
            out,
            code,
            numerics,
            backend,
            config_key: serde_json::to_string(cfg).expect("config serialises"),
        }
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.out.dir.join("jobs")
    }

    fn job_path(&self, id: &str) -> PathBuf {
        self.jobs_dir().join(format!("{id}.toml"))
    }

    /// A job's file if it is whole and belongs to this figure, config, mode and numerics;
    /// otherwise why not. A damaged file (its checksum fails, or it does not parse) is
    /// stale: the job is run again.
    fn read_job(&self, id: &str) -> Result<JobFile<toml::Value>, JobState> {
        let bytes = std::fs::read(self.job_path(id)).map_err(|_| JobState::Missing)?;
        let text = verified(&bytes).ok_or(JobState::Stale)?;
        let doc = toml::from_str::<JobFile<toml::Value>>(text).map_err(|_| JobState::Stale)?;
        let same = doc.figure == F::NAME
            && doc.id == id
            && doc.quick == self.quick
            && doc.config_key == self.config_key
            && doc.numerics == self.numerics;
        if same { Ok(doc) } else { Err(JobState::Stale) }
    }

    /// Deletes every job result (`--fresh`).
    pub fn clear_jobs(&self) -> Result<(), FigureError> {
        let dir = self.jobs_dir();
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FigureError::Io(format!(
                "cannot remove {}: {e}",
                dir.display()
            ))),
            _ => Ok(()),
        }
    }

    /// The figure's jobs; ids must be unique, since each names a file.
    pub fn plan(&self) -> Result<Vec<JobSpec>, FigureError> {
        let plan = F::plan(self.cfg)?;
        let mut ids: Vec<&str> = plan.iter().map(|j| j.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(FigureError::Config {
                path: F::NAME.into(),
                message: format!(
                    "two jobs share the id `{}`; is a value repeated in the config's lists?",
                    w[0]
                ),
            });
        }
        Ok(plan)
    }

    /// The plan with each job's state.
    pub fn status(&self) -> Result<Vec<(JobSpec, JobState)>, FigureError> {
        Ok(self
            .plan()?
            .into_iter()
            .map(|j| {
                let state = self.read_job(&j.id).err().unwrap_or(JobState::Done);
                (j, state)
            })
            .collect())
    }

    /// Runs this shard's jobs that are not done yet, writing each result atomically.
    pub fn run_shard<B: Kernels>(
        &self,
        shard: Shard,
        device: &B::Device,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ShardReport, FigureError> {
        let plan = self.plan()?;
        let dir = self.jobs_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| FigureError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let mine: Vec<usize> = (0..plan.len()).filter(|&i| shard.owns(i)).collect();
        let mut report = ShardReport::default();
        for (k, &i) in mine.iter().enumerate() {
            let job = &plan[i];
            noisegeom_data::stop::check()?;
            if self
                .read_job(&job.id)
                .is_ok_and(|doc| doc.backend == self.backend)
            {
                report.skipped.push(job.id.clone());
                continue;
            }
            progress(&format!(
                "job {}/{} {}: {}",
                k + 1,
                mine.len(),
                job.id,
                job.label
            ));
            let t0 = Instant::now();
            noisegeom_data::mem::reset_peak();
            let part = F::run_job::<B>(self.cfg, i, device, &self.out.dir)?;
            let doc = JobFile {
                figure: F::NAME.to_string(),
                id: job.id.clone(),
                label: job.label.clone(),
                quick: self.quick,
                config_key: self.config_key.clone(),
                numerics: self.numerics.clone(),
                code: self.code.clone(),
                backend: self.backend.clone(),
                shard: format!("{}/{}", shard.index, shard.count),
                seconds: t0.elapsed().as_secs_f64(),
                peak_bytes: noisegeom_data::mem::peak_bytes().unwrap_or(0),
                result: part,
            };
            let path = self.job_path(&job.id);
            let text = toml::to_string(&doc).map_err(|e| {
                FigureError::Io(format!(
                    "{}: cannot encode the result ({e})",
                    path.display()
                ))
            })?;
            noisegeom_train::fsio::write_atomic(&path, &with_checksum(&text))
                .map_err(|e| FigureError::Io(format!("cannot write {}: {e}", path.display())))?;
            report.ran.push(job.id.clone());
        }
        Ok(report)
    }

    /// Merges every job's result into `<name>.json`, `.png`, `.svg` and `<name>.env.json`.
    /// Fails, naming them, when jobs are missing or stale.
    pub fn merge(&self, env: Value) -> Result<(PathBuf, String), FigureError> {
        let t0 = Instant::now();
        let plan = self.plan()?;
        let mut parts = Vec::with_capacity(plan.len());
        let mut jobs = Vec::with_capacity(plan.len());
        let mut missing = Vec::new();
        for job in &plan {
            match self.read_job(&job.id) {
                Ok(doc) => {
                    let part: F::Part = doc.result.try_into().map_err(|e| {
                        FigureError::Io(format!(
                            "{}: unreadable result ({e}); delete it and rerun its shard",
                            self.job_path(&job.id).display()
                        ))
                    })?;
                    parts.push(part);
                    jobs.push((job.id.as_str(), doc.shard, doc.backend, doc.seconds));
                }
                Err(state) => missing.push(format!("{} ({})", job.id, state.name())),
            }
        }
        if !missing.is_empty() {
            let shown: Vec<_> = missing.iter().take(5).cloned().collect();
            return Err(FigureError::Io(format!(
                "{}: {} of {} jobs not done in {}: {}{}; run `noisegeom sweep run` for their shards first",
                F::NAME,
                missing.len(),
                plan.len(),
                self.jobs_dir().display(),
                shown.join(", "),
                if missing.len() > 5 { ", …" } else { "" }
            )));
        }
        let (results, mut text) = F::merge(self.cfg, parts, self.out)?;
        let mut backends: Vec<&str> = jobs.iter().map(|j| j.2.as_str()).collect();
        backends.sort_unstable();
        backends.dedup();
        if backends.len() > 1 {
            text += &format!(
                "\n  note: the jobs ran on {} backends ({}); numbers may differ in the last digits",
                backends.len(),
                backends.join(", ")
            );
        }
        let path = self.out.write(self.cfg, self.quick, &results)?;
        let job_seconds: f64 = jobs.iter().map(|j| j.3).sum();
        let jobs: Vec<Value> = jobs
            .iter()
            .map(|(id, shard, backend, seconds)| {
                json!({"id": id, "shard": shard, "backend": backend, "seconds": seconds})
            })
            .collect();
        self.out.write_env(&json!({
            "env": env,
            "code": self.code,
            "numerics": self.numerics,
            "job_seconds_total": job_seconds,
            "merge_seconds": t0.elapsed().as_secs_f64(),
            "jobs": jobs,
        }))?;
        text += &format!("\n  results: {}", path.display());
        Ok((path, text))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use burn::backend::NdArray;
    use serde::{Deserialize, Serialize};

    use super::{Figure, JobSpec, JobState, Shard, Sweep};
    use crate::{FigureError, Output};

    thread_local! {
        /// Jobs computed by the test figures in this thread.
        static COMPUTED: Cell<usize> = const { Cell::new(0) };
    }

    #[derive(Serialize, Deserialize)]
    struct Cfg {
        points: Vec<f64>,
    }

    /// A figure of squares, one job per point; `V` is its numerics version.
    struct Squares<const V: u32>;

    impl<const V: u32> Figure for Squares<V> {
        const NAME: &'static str = "squares";
        const NUMERICS: u32 = V;
        type Config = Cfg;
        type Part = f64;

        fn plan(cfg: &Cfg) -> Result<Vec<JobSpec>, FigureError> {
            Ok((0..cfg.points.len())
                .map(|i| JobSpec {
                    id: format!("p{i}"),
                    label: String::new(),
                })
                .collect())
        }

        fn run_job<B: noisegeom_kernels::Kernels>(
            cfg: &Cfg,
            index: usize,
            _: &B::Device,
            _: &std::path::Path,
        ) -> Result<f64, FigureError> {
            COMPUTED.with(|c| c.set(c.get() + 1));
            Ok(cfg.points[index].powi(2))
        }

        fn merge(
            _: &Cfg,
            parts: Vec<f64>,
            _: &Output,
        ) -> Result<(serde_json::Value, String), FigureError> {
            Ok((serde_json::json!(parts), String::new()))
        }
    }

    /// Runs every job of `Squares<V>` for `code`; returns how many were computed and the
    /// jobs' states before the run.
    fn run<const V: u32>(cfg: &Cfg, out: &Output, code: &str) -> (usize, Vec<JobState>) {
        run_on::<V>(cfg, out, code, 0)
    }

    /// [`run`] on a backend whose own kernels' numerics version is `kernels`.
    fn run_on<const V: u32>(
        cfg: &Cfg,
        out: &Output,
        code: &str,
        kernels: u32,
    ) -> (usize, Vec<JobState>) {
        let sweep = Sweep::<Squares<V>>::new(cfg, false, out, code.into(), "cpu".into(), kernels);
        let before = sweep.status().unwrap().into_iter().map(|j| j.1).collect();
        COMPUTED.with(|c| c.set(0));
        sweep
            .run_shard::<NdArray<f64>>(Shard::ALL, &Default::default(), &mut |_| {})
            .unwrap();
        (COMPUTED.with(Cell::get), before)
    }

    #[test]
    fn finished_jobs_survive_a_new_code_revision_but_not_new_numerics() {
        let tmp = tempfile::tempdir().unwrap();
        let out = Output {
            dir: tmp.path().to_path_buf(),
            name: "squares".into(),
        };
        let cfg = Cfg {
            points: vec![1.0, 2.0, 3.0],
        };
        let missing = vec![JobState::Missing; 3];
        assert_eq!(run::<1>(&cfg, &out, "noisegeom 0.1.0 aaaa"), (3, missing));
        // A commit elsewhere in the code (another revision, a dirty tree): all reused.
        let done = vec![JobState::Done; 3];
        assert_eq!(
            run::<1>(&cfg, &out, "noisegeom 0.1.0 bbbb (dirty)"),
            (0, done)
        );
        // The figure's numerics changed: every job is redone, then reused again.
        let stale = vec![JobState::Stale; 3];
        assert_eq!(run::<2>(&cfg, &out, "noisegeom 0.1.0 cccc"), (3, stale));
        assert_eq!(
            run::<2>(&cfg, &out, "noisegeom 0.1.0 dddd"),
            (0, vec![JobState::Done; 3])
        );
        // The backend's own kernels changed their rounding: redone, then reused.
        assert_eq!(
            run_on::<2>(&cfg, &out, "dddd", 1),
            (3, vec![JobState::Stale; 3])
        );
        assert_eq!(run_on::<2>(&cfg, &out, "dddd", 1).0, 0);
        // Another config is another figure's work.
        let other = Cfg {
            points: vec![1.0, 2.0, 4.0],
        };
        assert_eq!(run::<2>(&other, &out, "noisegeom 0.1.0 dddd").0, 3);
    }

    /// Seeded corruptions of a finished job's file (truncations, flipped bits, a huge
    /// number): each reads as stale and the job runs again, or, if it still reads as done,
    /// its result is the true one. Nothing panics.
    #[test]
    fn damaged_job_files_are_run_again() {
        let tmp = tempfile::tempdir().unwrap();
        let out = Output {
            dir: tmp.path().to_path_buf(),
            name: "squares".into(),
        };
        let cfg = Cfg {
            points: vec![1.0, 2.0, 3.0],
        };
        run::<1>(&cfg, &out, "code");
        let sweep = Sweep::<Squares<1>>::new(&cfg, false, &out, "code".into(), "cpu".into(), 0);
        let path = sweep.job_path("p1");
        let good = std::fs::read(&path).unwrap();
        assert_eq!(sweep.status().unwrap()[1].1, JobState::Done);
        let mut rng = noisegeom_data::seeded_rng(0, "fuzz-job-files");
        let mut next = |bound: usize| rand::RngExt::random_range(&mut rng, 0..bound);
        let mut stale = 0;
        for case in 0..300 {
            let mut bytes = good.clone();
            match case % 3 {
                0 => bytes.truncate(next(good.len())),
                1 => {
                    for _ in 0..1 + next(3) {
                        let at = next(bytes.len());
                        bytes[at] ^= 1 << next(8);
                    }
                }
                _ => {
                    let text = String::from_utf8(bytes).unwrap();
                    let huge = ["1e999999", "18446744073709551616", "-0", "nan"][next(4)];
                    let key = ["seconds = ", "result = ", "peak_bytes = "][next(3)];
                    let start = text.find(key).unwrap() + key.len();
                    let end = start + text[start..].find('\n').unwrap();
                    bytes = format!("{}{huge}{}", &text[..start], &text[end..]).into_bytes();
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            match sweep.status().unwrap()[1].1 {
                JobState::Done => {
                    let doc = sweep.read_job("p1").ok().unwrap();
                    assert_eq!(doc.result, toml::Value::Float(4.0), "case {case}");
                }
                JobState::Stale | JobState::Missing => stale += 1,
            }
        }
        assert!(stale > 250, "only {stale} of 300 damaged files were caught");
        // A damaged job runs again, and its file is whole.
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert_eq!(run::<1>(&cfg, &out, "code").0, 1);
        assert_eq!(sweep.status().unwrap()[1].1, JobState::Done);
    }

    #[test]
    fn shards_parse_and_partition() {
        assert_eq!("2/5".parse(), Ok(Shard { index: 2, count: 5 }));
        assert_eq!(" 0 / 1 ".parse(), Ok(Shard::ALL));
        for bad in ["3/3", "1/0", "a/2", "2", "-1/3", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        // Every job lands in exactly one of N shards.
        for n in 1..6 {
            for job in 0..20 {
                let owners = (0..n)
                    .filter(|&i| Shard { index: i, count: n }.owns(job))
                    .count();
                assert_eq!(owners, 1);
            }
        }
    }
}
