//! Secrets: named or anonymous sets of environment variables, sealed at rest.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::{now, CreationMode, NamedObject, ObjectKind, Result, Store, StoreError};

#[derive(Clone, Debug)]
pub struct SecretInfo {
    pub object: NamedObject,
    pub keys: Vec<String>,
    pub last_used_at: Option<f64>,
}


fn check_env_dict(env: &BTreeMap<String, String>) -> Result<()> {
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > 64 * 1024 {
        return Err(StoreError::Invalid(format!("Secret of {total} bytes is too large: a secret may hold at most 64 KiB")));
    }
    for k in env.keys() {
        let valid = !k.is_empty() && !k.starts_with(|c: char| c.is_ascii_digit()) && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(StoreError::Invalid(format!(
                "Secret key '{k}' is not a valid environment variable name: use letters, digits and underscores, not starting with a digit"
            )));
        }
    }
    Ok(())
}

impl Store {
    /// `SecretGetOrCreate`: looks up, creates, or overwrites per `mode`.
    pub async fn secret_get_or_create(
        &self,
        environment: &str,
        name: &str,
        mode: CreationMode,
        env: &BTreeMap<String, String>,
        required_keys: &[String],
        created_by: &str,
    ) -> Result<SecretInfo> {
        if mode != CreationMode::Lookup {
            check_env_dict(env)?;
        }
        let overwrite = mode == CreationMode::CreateOverwriteIfExists;
        let (obj, created) = self.get_or_create_object(ObjectKind::Secret, environment, name, mode, created_by).await?;
        if created || overwrite {
            self.write_secret(&obj.id, env).await?;
        }
        let info = self.secret_info(&obj.id).await?;
        let missing: Vec<&String> = required_keys.iter().filter(|k| !info.keys.contains(k)).collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            return Err(StoreError::NotFound(format!(
                "Secret '{}' is missing required key(s): {}",
                obj.name.as_deref().unwrap_or(&obj.id),
                names.join(", ")
            )));
        }
        Ok(info)
    }

    async fn write_secret(&self, id: &str, env: &BTreeMap<String, String>) -> Result<()> {
        let plain = serde_json::to_vec(env).expect("a string map serialises");
        let keys = serde_json::to_string(&env.keys().collect::<Vec<_>>()).expect("a string list serialises");
        sqlx::query("INSERT OR REPLACE INTO secrets (secret_id, sealed, keys, last_used_at) VALUES (?, ?, ?, NULL)")
            .bind(id)
            .bind(self.sealer().seal(&plain))
            .bind(keys)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn secret_info(&self, id: &str) -> Result<SecretInfo> {
        let object = self.object(ObjectKind::Secret, id).await?;
        let row = sqlx::query("SELECT keys, last_used_at FROM secrets WHERE secret_id = ?").bind(id).fetch_optional(&self.pool).await?;
        let (keys, last_used_at) = match row {
            Some(r) => (serde_json::from_str(&r.get::<String, _>(0)).unwrap_or_default(), r.get(1)),
            None => (Vec::new(), None),
        };
        Ok(SecretInfo { object, keys, last_used_at })
    }

    /// The decrypted variables, for injection into a container; marks the secret used.
    pub async fn secret_values(&self, id: &str) -> Result<BTreeMap<String, String>> {
        self.object(ObjectKind::Secret, id).await?;
        let sealed: Option<Vec<u8>> = sqlx::query_scalar("UPDATE secrets SET last_used_at = ? WHERE secret_id = ? RETURNING sealed")
            .bind(now())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match sealed {
            Some(s) => serde_json::from_slice(&self.sealer().open(&s)?)
                .map_err(|e| StoreError::Io(format!("secret {id} is corrupt: {e}"))),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Merges updates into a secret; a `None` value removes the key.
    pub async fn secret_update(&self, id: &str, updates: &[(String, Option<String>)]) -> Result<()> {
        let mut env = self.secret_values(id).await?;
        for (k, v) in updates {
            match v {
                Some(v) => env.insert(k.clone(), v.clone()),
                None => env.remove(k),
            };
        }
        check_env_dict(&env)?;
        self.write_secret(id, &env).await
    }
}
