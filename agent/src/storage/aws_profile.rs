//! AWS shared credentials and config files (`~/.aws/credentials`, `~/.aws/config`), read for
//! the profile `AWS_PROFILE` (or `default`) when the environment holds no access key. Only
//! static keys are read (access key, secret, session token) and the profile's region; SSO and
//! assume-role profiles are not supported and say so.

use std::path::PathBuf;

use hyperexport_shared::RepoError;
use hyperexport_shared::error::Result;

/// The keys of one profile.
#[derive(Debug, PartialEq, Eq)]
pub struct Profile {
    /// `aws_access_key_id`.
    pub access_key_id: String,
    /// `aws_secret_access_key`.
    pub secret_access_key: String,
    /// `aws_session_token`, if any.
    pub session_token: Option<String>,
    /// `region` from the credentials or the config file, if any.
    pub region: Option<String>,
}

/// The `[section]`'s `key = value` pairs of an INI text; `None` if there is no such section.
/// Lines outside sections, comments (`#`, `;`) and blank lines are skipped.
pub fn section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut current: Option<&str> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(header.trim());
            if current == Some(name) {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        if current == Some(name)
            && let (Some(pairs), Some((k, v))) = (found.as_mut(), line.split_once('='))
        {
            let pairs: &mut Vec<(String, String)> = pairs;
            pairs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    found
}

fn home_file(env: &str, default: &str) -> Option<PathBuf> {
    std::env::var_os(env).map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(default)))
}

/// The profile from the files, if the credentials file exists; an error if the named profile
/// is missing or has no static keys.
pub fn load() -> Result<Option<Profile>> {
    let Some(path) = home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials") else { return Ok(None) };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RepoError::io("read", &path)(e)),
    };
    let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let config = home_file("AWS_CONFIG_FILE", ".aws/config").and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    parse(&text, &config, &name).map_err(|reason| RepoError::Invalid(format!("{}: {reason}", path.display()))).map(Some)
}

/// The profile `name` from the texts of a credentials and a config file.
pub fn parse(credentials: &str, config: &str, name: &str) -> std::result::Result<Profile, String> {
    let pairs = section(credentials, name).ok_or_else(|| format!("no profile [{name}]"))?;
    let get = |pairs: &[(String, String)], key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let access_key_id = get(&pairs, "aws_access_key_id")
        .ok_or_else(|| format!("profile [{name}] has no aws_access_key_id (only static keys are supported)"))?;
    let secret_access_key = get(&pairs, "aws_secret_access_key").ok_or_else(|| format!("profile [{name}] has no aws_secret_access_key"))?;
    let config_section = if name == "default" { "default".to_string() } else { format!("profile {name}") };
    let region = get(&pairs, "region").or_else(|| section(config, &config_section).and_then(|c| get(&c, "region")));
    Ok(Profile { access_key_id, secret_access_key, session_token: get(&pairs, "aws_session_token"), region })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_with_their_region() {
        let creds = "# keys\n[default]\naws_access_key_id = AK\naws_secret_access_key=SK\n\n[ci]\nAWS_ACCESS_KEY_ID=A2\naws_secret_access_key = S2\naws_session_token = T\n";
        let config = "[default]\nregion = eu-west-1\n[profile ci]\nregion=us-east-2\n";
        let d = parse(creds, config, "default").unwrap();
        assert_eq!((d.access_key_id.as_str(), d.secret_access_key.as_str(), d.region.as_deref()), ("AK", "SK", Some("eu-west-1")));
        let ci = parse(creds, config, "ci").unwrap();
        assert_eq!((ci.session_token.as_deref(), ci.region.as_deref()), (Some("T"), Some("us-east-2")));
        assert!(parse(creds, config, "other").unwrap_err().contains("no profile [other]"));
        assert!(parse("[sso]\nsso_start_url = x\n", "", "sso").unwrap_err().contains("only static keys"));
    }
}
