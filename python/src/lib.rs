//! The Rust half of the `dreamgym` Python package: one env (`RawEnv`) and one vector env
//! (`RawVecEnv`, NEXT_STEP autoreset, the GIL released while its workers step) over
//! `dreamgym_envs`, with observations and actions as numpy arrays. The Python half
//! (`python/dreamgym/__init__.py`) wraps them as `gymnasium.Env` and
//! `gymnasium.vector.VectorEnv` and registers every env id under `dreamgym/`.
//!
//! Spaces and infos cross as JSON (the serde form of `dreamgym_envs::Space` and `Info`), which
//! the Python half turns into Gymnasium spaces and dicts. Every error is a Python exception
//! with the Rust message: `ValueError` for an action that is not in the action space,
//! `DreamgymError` (a `RuntimeError`) for the rest, closed envs included.
//!
//! # Your own envs in Python
//!
//! This crate is also a library: an extension module of your own calls [`add_envs`] with a
//! [`Registry`] holding your envs, and importing it registers them under `dreamgym/` beside
//! the built-in ones (`examples/custom_env_python` does this for `Pendulum-v1`):
//!
//! ```ignore
//! use pyo3::prelude::*;
//!
//! #[pymodule]
//! fn my_envs(m: &Bound<'_, PyModule>) -> PyResult<()> {
//!     let mut registry = dreamgym_envs::Registry::with_builtins();
//!     registry
//!         .register("MyEnv-v0", "what it is", Some(500), MyEnv::new)
//!         .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
//!     dreamgym_python::add_envs(m, registry)
//! }
//! ```

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use dreamgym_envs::vector::{AutoresetMode, ThreadedVecEnv, VecEnv};
use dreamgym_envs::{Dtype, Env, Info, Registry, Space, Value};
use dreamgym_sim::{Frame, Renderer};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

pyo3::create_exception!(
    _dreamgym,
    DreamgymError,
    PyRuntimeError,
    "An error from a dreamgym env (with the Rust message)."
);

// Errors raise `dreamgym._dreamgym.DreamgymError` looked up by name, so that a user's
// extension module (its own copy of this crate, see `add_envs`) raises the very class Python
// code catches as `dreamgym.DreamgymError`, not a twin of it.
mod shared {
    pyo3::import_exception!(dreamgym._dreamgym, DreamgymError);
}

fn err(e: impl std::fmt::Display) -> PyErr {
    shared::DreamgymError::new_err(e.to_string())
}

/// The envs this extension module makes: the built-in ones, or those `add_envs` was given.
static REGISTRY: OnceLock<Registry> = OnceLock::new();

fn registry() -> &'static Registry {
    REGISTRY.get_or_init(Registry::with_builtins)
}

/// The config overrides as JSON, from the JSON text Python sends (`None`: the defaults).
fn overrides(config: Option<&str>) -> PyResult<Option<serde_json::Value>> {
    config
        .map(|c| {
            serde_json::from_str(c).map_err(|e| PyValueError::new_err(format!("bad config: {e}")))
        })
        .transpose()
}

/// The ids of every registered env.
#[pyfunction]
fn env_ids() -> Vec<String> {
    registry().ids()
}

/// An observation as Python objects: numpy arrays shaped as the space says, ints, strings,
/// dicts.
fn to_py<'py>(py: Python<'py>, space: &Space, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match (space, value) {
        // A vector needs no reshape (one numpy object fewer per step).
        (Space::Box(b), Value::F32(v)) if b.shape.len() == 1 => {
            PyArray1::from_slice(py, v).into_any()
        }
        (Space::Box(b), Value::F32(v)) => PyArray1::from_slice(py, v)
            .reshape(b.shape.clone())?
            .into_any(),
        (Space::Box(b), Value::U8(v)) => PyArray1::from_slice(py, v)
            .reshape(b.shape.clone())?
            .into_any(),
        (_, Value::Int(i)) => i.into_pyobject(py)?.into_any(),
        (_, Value::Ints(v)) => PyArray1::from_slice(py, v).into_any(),
        (_, Value::Text(t)) => t.into_pyobject(py)?.into_any(),
        (Space::Dict(d), Value::Dict(m)) => {
            let out = PyDict::new(py);
            for (k, v) in m {
                let s = d
                    .spaces
                    .get(k)
                    .ok_or_else(|| err(format!("observation key `{k}` is not in the space")))?;
                out.set_item(k, to_py(py, s, v)?)?;
            }
            out.into_any()
        }
        (s, v) => {
            return Err(err(format!(
                "{} is not an observation of {s}",
                v.describe()
            )));
        }
    })
}

/// A batch of observations (one per env) as Python objects: arrays stacked on a first axis of
/// `n`, dicts of such arrays, lists of strings.
fn stack_to_py<'py>(
    py: Python<'py>,
    space: &Space,
    values: &[&Value],
) -> PyResult<Bound<'py, PyAny>> {
    let n = values.len();
    let mut shape = vec![n];
    Ok(match space {
        Space::Box(b) if b.dtype == Dtype::F32 => {
            shape.extend(&b.shape);
            let mut flat = Vec::with_capacity(n * b.len());
            for v in values {
                flat.extend_from_slice(
                    v.as_f32()
                        .ok_or_else(|| err("a vector env returned a non-float observation"))?,
                );
            }
            PyArray1::from_vec(py, flat).reshape(shape)?.into_any()
        }
        Space::Box(b) => {
            shape.extend(&b.shape);
            let mut flat = Vec::with_capacity(n * b.len());
            for v in values {
                match v {
                    Value::U8(x) => flat.extend_from_slice(x),
                    _ => return Err(err("a vector env returned a non-byte observation")),
                }
            }
            PyArray1::from_vec(py, flat).reshape(shape)?.into_any()
        }
        Space::Discrete(_) => {
            let ints: Vec<i64> = values
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Ok(*i),
                    _ => Err(err("a vector env returned a non-integer observation")),
                })
                .collect::<PyResult<_>>()?;
            PyArray1::from_vec(py, ints).into_any()
        }
        Space::MultiDiscrete(m) => {
            shape.push(m.nvec.len());
            let mut flat = Vec::with_capacity(n * m.nvec.len());
            for v in values {
                match v {
                    Value::Ints(x) => flat.extend_from_slice(x),
                    _ => return Err(err("a vector env returned a non-integer observation")),
                }
            }
            PyArray1::from_vec(py, flat).reshape(shape)?.into_any()
        }
        Space::Dict(d) => {
            let out = PyDict::new(py);
            for (k, s) in &d.spaces {
                let parts: Vec<&Value> = values
                    .iter()
                    .map(|v| match v {
                        Value::Dict(m) => m.get(k).ok_or_else(|| err(format!("missing key `{k}`"))),
                        _ => Err(err("a vector env returned a non-dict observation")),
                    })
                    .collect::<PyResult<_>>()?;
                out.set_item(k, stack_to_py(py, s, &parts)?)?;
            }
            out.into_any()
        }
        Space::Text(_) => {
            let texts: Vec<&str> = values.iter().map(|v| v.as_text().unwrap_or("")).collect();
            PyList::new(py, texts)?.into_any()
        }
    })
}

/// An action from Python: a float32 array for a float Box, an int for Discrete, an int64
/// array for MultiDiscrete, a string for Text, a dict of those for Dict. The Python half
/// has already converted numbers to those dtypes; what is left is checked against the space.
fn from_py(space: &Space, action: &Bound<'_, PyAny>) -> PyResult<Value> {
    let value =
        match space {
            Space::Box(b) if b.dtype == Dtype::F32 => {
                let a: PyReadonlyArrayDyn<f32> = action.extract().map_err(|_| {
                    PyValueError::new_err(format!("expected a float32 array for {space}"))
                })?;
                if a.shape() != b.shape.as_slice() && !(a.len() == b.len() && a.ndim() <= 1) {
                    return Err(PyValueError::new_err(format!(
                        "an action of shape {:?}; the action space {space} takes shape {:?}",
                        a.shape(),
                        b.shape
                    )));
                }
                Value::F32(a.as_array().iter().copied().collect())
            }
            Space::Box(_) => {
                return Err(PyValueError::new_err(format!(
                    "byte Box actions are not supported ({space})"
                )));
            }
            Space::Discrete(_) => Value::Int(action.extract().map_err(|_| {
                PyValueError::new_err(format!("expected an integer action for {space}"))
            })?),
            Space::MultiDiscrete(_) => {
                let a: PyReadonlyArrayDyn<i64> = action.extract().map_err(|_| {
                    PyValueError::new_err(format!("expected an int64 array for {space}"))
                })?;
                Value::Ints(a.as_array().iter().copied().collect())
            }
            Space::Text(_) => Value::Text(action.extract().map_err(|_| {
                PyValueError::new_err(format!("expected a string action for {space}"))
            })?),
            Space::Dict(d) => {
                let dict = action.cast::<PyDict>().map_err(|_| {
                    PyValueError::new_err(format!("expected a dict action for {space}"))
                })?;
                let mut out = BTreeMap::new();
                for (k, s) in &d.spaces {
                    let item = dict.get_item(k)?.ok_or_else(|| {
                        PyValueError::new_err(format!("the action lacks key `{k}`"))
                    })?;
                    out.insert(k.clone(), from_py(s, &item)?);
                }
                Value::Dict(out)
            }
        };
    space
        .check_action(&value)
        .map_err(|e| PyValueError::new_err(format!("invalid action: {e}")))?;
    Ok(value)
}

/// JSON as Python objects (dicts, lists, floats, ints, strings, bools, None).
fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => py.None().into_bound(py),
        J::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        J::String(s) => s.into_pyobject(py)?.into_any(),
        J::Array(a) => {
            let items = a
                .iter()
                .map(|x| json_to_py(py, x))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        J::Object(m) => info_to_py(py, m)?.into_any(),
    })
}

/// An info dict as a Python dict. `episode_seed` is a 64-bit unsigned seed (those drawn for
/// unseeded resets use all 64 bits): it comes as a `numpy.uint64`, so that Gymnasium's vector
/// envs, which gather an int info of their envs into an array typed by the first env's
/// value, hold every env's.
fn info_to_py<'py>(py: Python<'py>, info: &Info) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in info {
        let value = match (k.as_str(), v.as_u64()) {
            ("episode_seed", Some(seed)) => {
                py.import("numpy")?.getattr("uint64")?.call1((seed,))?
            }
            _ => json_to_py(py, v)?,
        };
        d.set_item(k, value)?;
    }
    Ok(d)
}

fn space_json(space: &Space) -> PyResult<String> {
    serde_json::to_string(space).map_err(err)
}

/// One env, as the Python `dreamgym.DreamgymEnv` drives it.
#[pyclass(module = "dreamgym._dreamgym")]
struct RawEnv {
    // Behind a mutex: a Python object may be used from any thread.
    env: Mutex<Option<Box<dyn Env>>>,
    observation_space: Space,
    action_space: Space,
}

/// Runs `f` on the env behind `slot`, or says it is closed.
fn with_open<T, R>(
    slot: &Mutex<Option<T>>,
    what: &str,
    f: impl FnOnce(&mut T) -> PyResult<R>,
) -> PyResult<R> {
    let mut guard = slot
        .lock()
        .map_err(|_| err(format!("the {what} failed in another thread")))?;
    let env = guard
        .as_mut()
        .ok_or_else(|| err(format!("the {what} is closed; make a new one")))?;
    f(env)
}

/// Takes the env out of `slot` (closing), whatever state the lock is in.
fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    match slot.lock() {
        Ok(mut g) => g.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

#[pymethods]
impl RawEnv {
    /// Makes env `id` with the config overrides `config` (JSON text, or `None`).
    #[new]
    #[pyo3(signature = (id, config=None))]
    fn new(id: &str, config: Option<&str>) -> PyResult<Self> {
        let env = registry()
            .make(id, overrides(config)?.as_ref())
            .map_err(err)?;
        Ok(Self {
            observation_space: env.observation_space().clone(),
            action_space: env.action_space().clone(),
            env: Mutex::new(Some(env)),
        })
    }

    /// The observation space as JSON.
    fn observation_space_json(&self) -> PyResult<String> {
        space_json(&self.observation_space)
    }

    /// The action space as JSON.
    fn action_space_json(&self) -> PyResult<String> {
        space_json(&self.action_space)
    }

    /// `(obs, info)`.
    #[pyo3(signature = (seed=None, options=None))]
    fn reset<'py>(
        &self,
        py: Python<'py>,
        seed: Option<u64>,
        options: Option<&str>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        let options: Info = match options {
            Some(o) => serde_json::from_str(o)
                .map_err(|e| PyValueError::new_err(format!("bad options: {e}")))?,
            None => Info::new(),
        };
        let (obs, info) = with_open(&self.env, "env", |e| e.reset(seed, &options).map_err(err))?;
        Ok((
            to_py(py, &self.observation_space, &obs)?,
            info_to_py(py, &info)?,
        ))
    }

    /// `(obs, reward, terminated, truncated, info)`.
    #[allow(clippy::type_complexity)]
    fn step<'py>(
        &self,
        py: Python<'py>,
        action: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, f64, bool, bool, Bound<'py, PyDict>)> {
        let action = from_py(&self.action_space, action)?;
        let s = with_open(&self.env, "env", |e| e.step(&action).map_err(err))?;
        Ok((
            to_py(py, &self.observation_space, &s.obs)?,
            s.reward,
            s.terminated,
            s.truncated,
            info_to_py(py, &s.info)?,
        ))
    }

    /// The env's camera picture of its scene now, `(height, width, 3)` uint8 (the pixel
    /// observation's camera and size), or `None` for an env without a camera.
    fn render<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        with_open(&self.env, "env", |e| {
            let (Some((world, scene)), Some(camera)) = (e.scene(), e.camera()) else {
                return Ok(None);
            };
            let mut frame = Frame::default();
            Renderer::new()
                .render(scene, world, &camera, &mut frame)
                .map_err(err)?;
            let shape = [frame.height, frame.width, 3];
            Ok(Some(
                PyArray1::from_vec(py, frame.rgb).reshape(shape)?.into_any(),
            ))
        })
    }

    /// Closes the env; later calls raise.
    fn close(&self) {
        if let Some(mut e) = take(&self.env) {
            e.close();
        }
    }

    /// Whether the env was closed.
    #[getter]
    fn closed(&self) -> bool {
        self.env.lock().map(|g| g.is_none()).unwrap_or(true)
    }
}

/// `num_envs` copies of one env on `workers` threads, NEXT_STEP autoreset.
#[pyclass(module = "dreamgym._dreamgym")]
struct RawVecEnv {
    envs: Mutex<Option<ThreadedVecEnv>>,
    num_envs: usize,
    observation_space: Space,
    action_space: Space,
}

/// One action per env from a batch: the first axis of an array, or a list (Text, Dict).
fn split_actions(space: &Space, n: usize, actions: &Bound<'_, PyAny>) -> PyResult<Vec<Value>> {
    let len = actions.len()?;
    if len != n {
        return Err(PyValueError::new_err(format!(
            "{len} actions for {n} envs: one per env is needed"
        )));
    }
    // Whole arrays: read once, cut per env, no Python object per env.
    let values = match space {
        Space::Box(b) if b.dtype == Dtype::F32 => actions
            .extract::<PyReadonlyArrayDyn<f32>>()
            .ok()
            .filter(|a| a.len() == n * b.len())
            .map(|a| {
                let flat: Vec<f32> = a.as_array().iter().copied().collect();
                flat.chunks(b.len().max(1))
                    .map(|c| Value::F32(c.to_vec()))
                    .collect::<Vec<_>>()
            }),
        Space::Discrete(_) => actions
            .extract::<PyReadonlyArrayDyn<i64>>()
            .ok()
            .filter(|a| a.ndim() == 1)
            .map(|a| a.as_array().iter().map(|&i| Value::Int(i)).collect()),
        _ => None,
    };
    let values = match values {
        Some(v) => v,
        None => (0..n)
            .map(|i| from_py(space, &actions.get_item(i)?))
            .collect::<PyResult<Vec<_>>>()?,
    };
    for (i, v) in values.iter().enumerate() {
        space
            .check_action(v)
            .map_err(|e| PyValueError::new_err(format!("invalid action for env {i}: {e}")))?;
    }
    Ok(values)
}

/// Per-env infos as a list of dicts.
fn infos_to_py<'py>(py: Python<'py>, infos: &[Info]) -> PyResult<Bound<'py, PyList>> {
    let dicts = infos
        .iter()
        .map(|i| info_to_py(py, i))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, dicts)
}

#[pymethods]
impl RawVecEnv {
    #[new]
    #[pyo3(signature = (id, num_envs, workers=1, config=None))]
    fn new(id: &str, num_envs: usize, workers: usize, config: Option<&str>) -> PyResult<Self> {
        if num_envs == 0 || workers == 0 {
            return Err(PyValueError::new_err(
                "num_envs and workers must be at least 1",
            ));
        }
        let reg = registry();
        let config = overrides(config)?;
        let envs = (0..num_envs)
            .map(|_| reg.make(id, config.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let vec = ThreadedVecEnv::new(envs, workers, AutoresetMode::NextStep).map_err(err)?;
        Ok(Self {
            observation_space: vec.single_observation_space().clone(),
            action_space: vec.single_action_space().clone(),
            num_envs,
            envs: Mutex::new(Some(vec)),
        })
    }

    #[getter]
    fn num_envs(&self) -> usize {
        self.num_envs
    }

    fn observation_space_json(&self) -> PyResult<String> {
        space_json(&self.observation_space)
    }

    fn action_space_json(&self) -> PyResult<String> {
        space_json(&self.action_space)
    }

    /// `(obs, infos)` (one dict per env): env `i` is seeded `seed + i`.
    #[pyo3(signature = (seed=None))]
    fn reset<'py>(
        &self,
        py: Python<'py>,
        seed: Option<u64>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyList>)> {
        let (obs, infos) = with_open(&self.envs, "vector env", |envs| {
            py.detach(|| envs.reset(seed, &Info::new())).map_err(err)
        })?;
        let refs: Vec<&Value> = obs.iter().collect();
        Ok((
            stack_to_py(py, &self.observation_space, &refs)?,
            infos_to_py(py, &infos)?,
        ))
    }

    /// `(obs, rewards, terminated, truncated, infos)`, every env stepped with the GIL
    /// released.
    #[allow(clippy::type_complexity)]
    fn step<'py>(
        &self,
        py: Python<'py>,
        actions: &Bound<'py, PyAny>,
    ) -> PyResult<(
        Bound<'py, PyAny>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<bool>>,
        Bound<'py, PyArray1<bool>>,
        Bound<'py, PyList>,
    )> {
        let actions = split_actions(&self.action_space, self.num_envs, actions)?;
        let s = with_open(&self.envs, "vector env", |envs| {
            py.detach(|| envs.step(&actions)).map_err(err)
        })?;
        let refs: Vec<&Value> = s.obs.iter().collect();
        Ok((
            stack_to_py(py, &self.observation_space, &refs)?,
            PyArray1::from_vec(py, s.rewards),
            PyArray1::from_vec(py, s.terminated),
            PyArray1::from_vec(py, s.truncated),
            infos_to_py(py, &s.infos)?,
        ))
    }

    fn close(&self) {
        if let Some(mut e) = take(&self.envs) {
            e.close();
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.envs.lock().map(|g| g.is_none()).unwrap_or(true)
    }
}

/// A recorded dataset (`dreamgym rollout --out DIR`), read chunk by chunk.
#[pyclass(module = "dreamgym._dreamgym")]
struct RawDataset {
    dataset: dreamgym_envs::recording::Dataset,
}

#[pymethods]
impl RawDataset {
    #[new]
    fn new(path: std::path::PathBuf) -> PyResult<Self> {
        Ok(Self {
            dataset: dreamgym_envs::recording::Dataset::open(&path).map_err(err)?,
        })
    }

    /// `dataset.json` as JSON text.
    fn meta_json(&self) -> PyResult<String> {
        serde_json::to_string(self.dataset.meta()).map_err(err)
    }

    /// Episodes stored (from the chunks' headers).
    fn stored_episodes(&self) -> usize {
        self.dataset.stored_episodes()
    }

    /// Number of chunk files.
    fn num_chunks(&self) -> usize {
        self.dataset.chunk_paths().len()
    }

    /// The episodes of chunk `i`, each a dict of numpy arrays: `observations` (T + 1 stacked),
    /// `actions` (T), `rewards`, `terminated`, `truncated` (T), and `seed`. A damaged chunk
    /// raises `DreamgymError` naming it.
    fn read_chunk<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let path = self
            .dataset
            .chunk_paths()
            .get(i)
            .ok_or_else(|| PyValueError::new_err(format!("no chunk {i}")))?
            .clone();
        let episodes = py.detach(|| self.dataset.read_chunk(&path)).map_err(err)?;
        let meta = self.dataset.meta();
        episodes
            .iter()
            .map(|e| {
                let d = PyDict::new(py);
                let obs: Vec<&Value> = e.observations.iter().collect();
                let actions: Vec<&Value> = e.actions.iter().collect();
                d.set_item("seed", e.seed)?;
                d.set_item(
                    "observations",
                    stack_to_py(py, &meta.observation_space, &obs)?,
                )?;
                d.set_item("actions", stack_to_py(py, &meta.action_space, &actions)?)?;
                d.set_item("rewards", PyArray1::from_slice(py, &e.rewards))?;
                d.set_item("terminated", PyArray1::from_slice(py, &e.terminated))?;
                d.set_item("truncated", PyArray1::from_slice(py, &e.truncated))?;
                Ok(d)
            })
            .collect()
    }
}

fn add_classes(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(env_ids, m)?)?;
    m.add_class::<RawEnv>()?;
    m.add_class::<RawVecEnv>()?;
    m.add_class::<RawDataset>()
}

/// Makes the envs of `registry` (build it with `Registry::with_builtins()` and register yours)
/// available in Python through the extension module `m` being initialised: importing the module
/// registers each env that is not one of dreamgym's own as `dreamgym/<id>` in Gymnasium, and
/// `dreamgym.make_vec("<id>")` finds it. Call it once, from the module's `#[pymodule]`
/// function; the `dreamgym` Python package must be installed.
pub fn add_envs(m: &Bound<'_, PyModule>, registry: Registry) -> PyResult<()> {
    if REGISTRY.set(registry).is_err() {
        return Err(err(
            "add_envs was already called in this extension module; call it once, with every env",
        ));
    }
    add_classes(m)?;
    let dreamgym = m.py().import("dreamgym")?;
    m.add("DreamgymError", dreamgym.getattr("DreamgymError")?)?;
    dreamgym.call_method1("register_envs", (m,))?;
    Ok(())
}

#[pymodule]
fn _dreamgym(m: &Bound<'_, PyModule>) -> PyResult<()> {
    add_classes(m)?;
    m.add("DreamgymError", m.py().get_type::<DreamgymError>())
}
