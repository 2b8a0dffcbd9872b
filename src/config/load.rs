//! Loading: defaults, then the TOML file, then `ROOMCAST_SECTION__KEY` variables, then the
//! command-line overrides, through the `config` crate (used nowhere else). Validation is
//! `validate`'s.

use std::path::Path;

use super::{Config, ConfigError, ENV_PREFIX, Overrides};

impl Config {
    /// Defaults, then the TOML file, then `ROOMCAST_SECTION__KEY` variables from `env`, then
    /// the overrides.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let config = Config::load_unvalidated(file, env, overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::load`] without [`Config::validate`]: `roomcast check-config` validates on its
    /// own to name every bad key, not only the first.
    pub fn load_unvalidated(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // Only ROOMCAST_SECTION__KEY names configuration: another tool's ROOMCAST_BIN or
        // ROOMCAST_URL must not stop the node.
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix(&format!("{ENV_PREFIX}_"))
                    .is_some_and(|rest| rest.contains("__"))
            })
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("server.allowed_origins")
                .with_list_parse_key("server.trusted_proxies")
                .with_list_parse_key("redis.urls")
                .try_parsing(true)
                .source(Some(env)),
        );
        let set = |b: config::ConfigBuilder<config::builder::DefaultState>,
                   key: &str,
                   v: &Option<String>| match v {
            Some(v) => b.set_override(key, v.clone()),
            None => Ok(b),
        };
        let map_err = |e| ConfigError::Load(Box::new(e));
        builder = set(builder, "server.listen", &overrides.listen).map_err(map_err)?;
        builder = set(builder, "admin.listen", &overrides.admin_listen).map_err(map_err)?;
        builder = set(builder, "server.node_id", &overrides.node_id).map_err(map_err)?;
        if let Some(url) = &overrides.redis_url {
            builder = builder
                .set_override("broker.kind", "redis")
                .and_then(|b| b.set_override("redis.url", url.clone()))
                .map_err(map_err)?;
        }
        if let Some(urls) = &overrides.redis_cluster {
            builder = builder
                .set_override("broker.kind", "redis")
                .and_then(|b| b.set_override("redis.cluster", true))
                .and_then(|b| b.set_override("redis.urls", urls.clone()))
                .map_err(map_err)?;
        }
        let raw = builder.build().map_err(map_err)?;
        let config: Config = raw.try_deserialize().map_err(describe_deserialize_error)?;
        Ok(config)
    }
}

/// The `config` crate names the section; serde names the field. Put them together so the
/// message names the whole key.
/// serde's "unknown field" reaches us only as text inside the config crate's error (it has no
/// variant for it), so the key is read from that text to name it.
fn describe_deserialize_error(err: config::ConfigError) -> ConfigError {
    let text = err.to_string();
    let quoted = |marker: &str, from: &str| {
        let (_, rest) = from.split_once(marker)?;
        rest.split_once('`').map(|(name, _)| name.to_owned())
    };
    let Some(field) = quoted("unknown field `", &text) else {
        return ConfigError::Load(Box::new(err));
    };
    let key = match text
        .rfind("for key `")
        .and_then(|at| quoted("for key `", &text[at..]))
    {
        Some(section) => format!("{section}.{field}"),
        None => field,
    };
    let source = Box::new(err);
    ConfigError::UnknownKey { key, source }
}
