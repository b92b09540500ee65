//! Egress rules of a sandbox: `allow_internet_access` and `network.{allowOut, denyOut}` of a
//! create, `PUT /sandboxes/{id}/network` later, both reported back by `GET /sandboxes/{id}`.
//!
//! What is enforced: every sandbox runs in its own network namespace that has only a
//! loopback interface, so no sandbox reaches anything outside itself, whatever its rules
//! say. "No internet" (`allow_internet_access: false`, or `denyOut: ["0.0.0.0/0"]`) therefore
//! holds for real. What is not: "internet on" and `allowOut` grant nothing here (the
//! emulator never routes a sandbox's traffic off the machine, so tests stay on loopback);
//! the rules are checked (entries must be IPs, CIDR blocks or, for `allowOut`, domain
//! names, as E2B requires), recorded and reported, not applied to traffic.

use crate::error::HttpError;
use crabbox_e2b_wire::control::{
    check_allow_out, check_deny_out, NetworkConfig, NetworkUpdate, NewSandbox,
};

/// One sandbox's egress rules as last set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    pub allow_internet_access: Option<bool>,
    pub allow_public_traffic: Option<bool>,
    pub allow_out: Option<Vec<String>>,
    pub deny_out: Option<Vec<String>>,
}

impl Egress {
    /// The detail's `network`, absent when nothing was ever set.
    pub fn network(&self) -> Option<NetworkConfig> {
        let config = NetworkConfig {
            allow_public_traffic: self.allow_public_traffic,
            allow_out: self.allow_out.clone(),
            deny_out: self.deny_out.clone(),
        };
        (config != NetworkConfig::default()).then_some(config)
    }

    /// Whether the rules leave the sandbox any way to the internet (informational: the
    /// emulator gives it none either way).
    pub fn internet_allowed(&self) -> bool {
        self.allow_internet_access != Some(false)
            && !self
                .deny_out
                .iter()
                .flatten()
                .any(|d| d == crabbox_e2b_wire::control::ALL_TRAFFIC)
    }
}

fn check_lists(allow: Option<&[String]>, deny: Option<&[String]>) -> Result<(), HttpError> {
    for entry in allow.into_iter().flatten() {
        check_allow_out(entry).map_err(HttpError::bad_request)?;
    }
    for entry in deny.into_iter().flatten() {
        check_deny_out(entry).map_err(HttpError::bad_request)?;
    }
    Ok(())
}

/// The rules a create asks for, checked (400 on a malformed `network` or entry).
pub fn create_rules(request: &NewSandbox) -> Result<Egress, HttpError> {
    let network: NetworkConfig = match &request.network {
        None | Some(serde_json::Value::Null) => NetworkConfig::default(),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|e| HttpError::bad_request(format!("invalid network: {e}")))?,
    };
    check_lists(network.allow_out.as_deref(), network.deny_out.as_deref())?;
    Ok(Egress {
        allow_internet_access: request.allow_internet_access,
        allow_public_traffic: network.allow_public_traffic,
        allow_out: network.allow_out,
        deny_out: network.deny_out,
    })
}

/// Applies `PUT /sandboxes/{id}/network`: the lists are replaced whole (an absent list is
/// an empty one, as E2B documents); `allow_internet_access` only when given.
pub fn apply_update(egress: &mut Egress, update: NetworkUpdate) -> Result<(), HttpError> {
    check_lists(update.allow_out.as_deref(), update.deny_out.as_deref())?;
    egress.allow_out = Some(update.allow_out.unwrap_or_default());
    egress.deny_out = Some(update.deny_out.unwrap_or_default());
    if let Some(allow) = update.allow_internet_access {
        egress.allow_internet_access = Some(allow);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_rules_are_recorded_and_checked() {
        let request: NewSandbox = serde_json::from_value(serde_json::json!({
            "templateID": "base", "allow_internet_access": false,
            "network": {"allowOut": ["example.com"], "denyOut": ["10.0.0.0/8"]}
        }))
        .unwrap();
        let egress = create_rules(&request).unwrap();
        assert_eq!(egress.allow_internet_access, Some(false));
        assert!(!egress.internet_allowed());
        assert_eq!(egress.network().unwrap().deny_out.unwrap(), ["10.0.0.0/8"]);
        let bad: NewSandbox = serde_json::from_value(serde_json::json!({
            "network": {"denyOut": ["example.com"]}
        }))
        .unwrap();
        assert_eq!(create_rules(&bad).unwrap_err().status.as_u16(), 400);
        assert!(create_rules(&NewSandbox::default())
            .unwrap()
            .network()
            .is_none());
    }

    #[test]
    fn an_update_replaces_the_lists() {
        let mut egress = Egress {
            allow_out: Some(vec!["a.com".into()]),
            deny_out: Some(vec!["10.0.0.0/8".into()]),
            ..Egress::default()
        };
        apply_update(
            &mut egress,
            NetworkUpdate {
                deny_out: Some(vec!["0.0.0.0/0".into()]),
                ..NetworkUpdate::default()
            },
        )
        .unwrap();
        assert_eq!(egress.allow_out, Some(vec![]));
        assert!(!egress.internet_allowed());
    }
}
