//! A registry of environments by string id (`Name-vN`) with typed, validated configs.
//!
//! Built-in and user environments register the same way:
//!
//! ```
//! use dreamgym_envs::{Registry, builtin::{CartPole, CartPoleConfig}};
//!
//! let mut registry = Registry::new();
//! registry
//!     .register::<CartPoleConfig, _>("MyCartPole-v1", "a cart-pole", Some(200), CartPole::new)
//!     .unwrap();
//! let env = registry.make("MyCartPole-v1", Some(&serde_json::json!({"force_mag": 5.0}))).unwrap();
//! assert!(registry.make("MyCartPole-v1", Some(&serde_json::json!({"force": 5.0}))).is_err());
//! assert!(registry.make("Nope-v0", None).is_err());
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::wrappers::TimeLimit;
use crate::{Env, EnvError};

/// A config value out of range: what [`EnvConfig::validate`] returns, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(message: String) -> Self {
        ConfigError(message)
    }
}

impl From<&str> for ConfigError {
    fn from(message: &str) -> Self {
        ConfigError(message.to_string())
    }
}

/// A typed environment configuration: deserialized from JSON/TOML with unknown fields
/// rejected, and validated before the env is built.
pub trait EnvConfig: Serialize + DeserializeOwned + Default + Clone + Send + 'static {
    /// Checks value ranges, describing the first bad field.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

type Maker = Arc<dyn Fn(&Json) -> Result<Box<dyn Env>, EnvError> + Send + Sync>;
type Canonical = Arc<dyn Fn(&Json) -> Result<Json, EnvError> + Send + Sync>;

/// What the registry knows about one env id.
#[derive(Clone)]
pub struct EnvSpec {
    /// The id, `Name-vN`.
    pub id: String,
    /// One line about the environment.
    pub description: String,
    /// Episodes are truncated after this many steps (a [`TimeLimit`] wrapper), if set.
    pub max_episode_steps: Option<u64>,
    /// The default config, as JSON.
    pub default_config: Json,
    make: Maker,
    canonical: Canonical,
}

impl std::fmt::Debug for EnvSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvSpec")
            .field("id", &self.id)
            .field("max_episode_steps", &self.max_episode_steps)
            .finish()
    }
}

/// Environments by id.
#[derive(Clone, Default, Debug)]
pub struct Registry {
    specs: BTreeMap<String, EnvSpec>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding dreamgym's built-in environments.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        crate::builtin::register_builtins(&mut r);
        r
    }

    /// Registers an environment under `id`, built by `make` from a config of type `C`.
    pub fn register<C, E>(
        &mut self,
        id: &str,
        description: &str,
        max_episode_steps: Option<u64>,
        make: fn(C) -> Result<E, EnvError>,
    ) -> Result<(), EnvError>
    where
        C: EnvConfig,
        E: Env + 'static,
    {
        check_id(id)?;
        if self.specs.contains_key(id) {
            return Err(EnvError::DuplicateId(id.to_string()));
        }
        let env_id = id.to_string();
        let maker: Maker = Arc::new(move |json: &Json| {
            let config: C =
                serde_json::from_value(json.clone()).map_err(|e| EnvError::InvalidConfig {
                    env: env_id.clone(),
                    message: e.to_string(),
                })?;
            config.validate().map_err(|e| EnvError::InvalidConfig {
                env: env_id.clone(),
                message: e.0,
            })?;
            Ok(Box::new(make(config)?) as Box<dyn Env>)
        });
        let canonical_id = id.to_string();
        // The config as its type writes it: `10` and `10.0`, or `9.8` and the f32 nearest to
        // it, are one config, and recorded datasets compare equal to what is asked again.
        let canonical: Canonical = Arc::new(move |json: &Json| {
            let config: C =
                serde_json::from_value(json.clone()).map_err(|e| EnvError::InvalidConfig {
                    env: canonical_id.clone(),
                    message: e.to_string(),
                })?;
            serde_json::to_value(config).map_err(|e| EnvError::Other(e.to_string()))
        });
        let default_config =
            serde_json::to_value(C::default()).map_err(|e| EnvError::Other(e.to_string()))?;
        self.specs.insert(
            id.to_string(),
            EnvSpec {
                id: id.to_string(),
                description: description.to_string(),
                max_episode_steps,
                default_config,
                make: maker,
                canonical,
            },
        );
        Ok(())
    }

    /// The spec of `id`.
    pub fn spec(&self, id: &str) -> Result<&EnvSpec, EnvError> {
        self.specs.get(id).ok_or_else(|| EnvError::UnknownEnv {
            id: id.to_string(),
            known: self.ids(),
        })
    }

    /// All registered ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.specs.keys().cloned().collect()
    }

    /// All specs, sorted by id.
    pub fn specs(&self) -> impl Iterator<Item = &EnvSpec> {
        self.specs.values()
    }

    /// The full config for `id` after applying `overrides` (a JSON object whose fields replace
    /// the defaults').
    pub fn resolve_config(&self, id: &str, overrides: Option<&Json>) -> Result<Json, EnvError> {
        let spec = self.spec(id)?;
        let mut config = spec.default_config.clone();
        if let Some(overrides) = overrides {
            let Json::Object(over) = overrides else {
                return Err(EnvError::InvalidConfig {
                    env: id.to_string(),
                    message: format!("config must be a table of fields, got {overrides}"),
                });
            };
            match &mut config {
                Json::Object(base) => {
                    for (k, v) in over {
                        base.insert(k.clone(), v.clone());
                    }
                }
                _ => config = overrides.clone(),
            }
        }
        (spec.canonical)(&config)
    }

    /// Builds the env `id` with `overrides` applied to its default config, wrapped in a
    /// [`TimeLimit`] when the spec has `max_episode_steps`.
    pub fn make(&self, id: &str, overrides: Option<&Json>) -> Result<Box<dyn Env>, EnvError> {
        let spec = self.spec(id)?;
        let config = self.resolve_config(id, overrides)?;
        let env = (spec.make)(&config)?;
        Ok(match spec.max_episode_steps {
            Some(max) => Box::new(TimeLimit::new(env, max)),
            None => env,
        })
    }
}

/// Parses `key=value` config overrides, as the command line's `--set` takes them: a value is
/// JSON when it parses as JSON (`force_mag=5`, `flag=true`, `obs="pixels"`), a string otherwise
/// (`obs=pixels`). `None` for no pairs.
pub fn parse_overrides(pairs: &[String]) -> Result<Option<Json>, ConfigError> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut map = serde_json::Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("`--set {pair}`: expected key=value"))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Json::String(v.into()));
        map.insert(k.trim().to_string(), value);
    }
    Ok(Some(Json::Object(map)))
}

/// Checks that `id` looks like `Name-vN`.
fn check_id(id: &str) -> Result<(), EnvError> {
    let ok = id.rsplit_once("-v").is_some_and(|(name, version)| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-/".contains(c))
            && !version.is_empty()
            && version.chars().all(|c| c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(EnvError::BadId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_json_values_and_fall_back_to_strings() {
        let pairs = [
            "a=5".to_string(),
            "b=true".into(),
            "c=pixels".into(),
            "d=[1,2]".into(),
        ];
        let v = parse_overrides(&pairs).unwrap().unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 5, "b": true, "c": "pixels", "d": [1, 2]})
        );
        assert!(parse_overrides(&["novalue".to_string()]).is_err());
        assert_eq!(parse_overrides(&[]).unwrap(), None);
    }

    #[test]
    fn ids_must_carry_a_version() {
        assert!(check_id("CartPole-v0").is_ok());
        assert!(check_id("my/Env-v12").is_ok());
        assert!(check_id("CartPole").is_err());
        assert!(check_id("CartPole-v").is_err());
        assert!(check_id("-v1").is_err());
        assert!(check_id("Cart Pole-v1").is_err());
    }

    #[test]
    fn builtins_carry_gymnasium_time_limits() {
        let r = Registry::with_builtins();
        let limits: Vec<_> = ["CartPole-v0", "Reacher-v0", "Racer-v0"]
            .iter()
            .map(|id| r.spec(id).unwrap().max_episode_steps)
            .collect();
        assert_eq!(limits, vec![Some(500), Some(50), Some(1000)]);
    }

    #[test]
    fn unknown_ids_and_bad_configs_are_clear_errors() {
        let r = Registry::with_builtins();
        let err = r.make("CartPole-v9", None).err().unwrap().to_string();
        assert!(err.contains("CartPole-v0"), "{err}");
        let err = r
            .make("CartPole-v0", Some(&serde_json::json!({"forcemag": 1})))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("forcemag"), "{err}");
        let err = r
            .make("CartPole-v0", Some(&serde_json::json!({"force_mag": -1})))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("force_mag"), "{err}");
        let err = r
            .make(
                "CartPole-v0",
                Some(&serde_json::json!({"force_mag": "big"})),
            )
            .err()
            .unwrap();
        assert!(matches!(err, EnvError::InvalidConfig { .. }));
        assert!(matches!(
            r.clone().register::<crate::builtin::CartPoleConfig, _>(
                "CartPole-v0",
                "",
                None,
                crate::builtin::CartPole::new
            ),
            Err(EnvError::DuplicateId(_))
        ));
    }
}
