//! The permission vocabulary (`<service>.<resource>.<verb>`), the built-in roles, and the rules
//! for names. A role may only name permissions that exist here, so a typo is an error rather
//! than a grant that silently matches nothing.

/// A resource and its verbs.
type Resource = (&'static str, &'static [&'static str]);

/// Every service's resources and the verbs each one has.
const SERVICES: &[(&str, &[Resource])] = &[
    (
        "iam",
        &[
            ("org", CRUD),
            ("project", CRUD),
            ("user", CRUD),
            ("sa", CRUD),
            ("group", CRUD),
            ("role", CRUD),
            ("binding", CRUD),
            ("credential", &["create", "get", "list", "delete", "revoke"]),
            ("key", &["get", "list", "rotate", "retire"]),
            ("audit", &["list"]),
            ("certificate", &["create", "get", "list"]),
        ],
    ),
    (
        "prismnet",
        &[
            ("vpc", CRUD),
            ("subnet", CRUD),
            ("port", CRUD),
            ("router", CRUD),
            ("sg", CRUD),
            ("fip", CRUD),
            ("pool", CRUD),
        ],
    ),
    (
        "plasmavmc",
        &[
            (
                "vm",
                &[
                    "create", "get", "list", "update", "delete", "start", "stop", "reboot",
                    "migrate", "console",
                ],
            ),
            ("image", CRUD),
            ("worker", CRUD),
        ],
    ),
    (
        "coronafs",
        &[(
            "volume",
            &[
                "create", "get", "list", "update", "delete", "attach", "detach", "snapshot",
            ],
        )],
    ),
    ("flashdns", &[("zone", CRUD), ("record", CRUD)]),
    (
        "fiberlb",
        &[
            ("lb", CRUD),
            ("listener", CRUD),
            ("pool", CRUD),
            ("backend", CRUD),
        ],
    ),
    ("lightningstor", &[("bucket", CRUD), ("object", CRUD)]),
    ("nightlight", &[("metric", &["write", "read"])]),
    ("creditservice", &[("quota", CRUD)]),
    ("k8shost", &[("cluster", CRUD), ("workload", CRUD)]),
    ("apigateway", &[("route", CRUD)]),
    ("flaredb", &[("namespace", CRUD)]),
];

const CRUD: &[&str] = &["create", "get", "list", "update", "delete"];

/// Whether `pattern` is a permission or pattern roles may grant: `*`, `<service>.*`,
/// `<service>.<resource>.*` or `<service>.<resource>.<verb>`, each naming things that exist.
pub fn is_valid_permission(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('.').collect();
    let Some((_, resources)) = SERVICES.iter().find(|(s, _)| *s == parts[0]) else {
        return false;
    };
    match parts.as_slice() {
        [_, "*"] => true,
        [_, resource, verb] => resources
            .iter()
            .find(|(r, _)| r == resource)
            .is_some_and(|(_, verbs)| *verb == "*" || verbs.contains(verb)),
        _ => false,
    }
}

/// Every concrete permission, for building roles like `viewer`.
fn all_permissions() -> impl Iterator<Item = String> {
    SERVICES.iter().flat_map(|(service, resources)| {
        resources.iter().flat_map(move |(resource, verbs)| {
            verbs
                .iter()
                .map(move |verb| format!("{service}.{resource}.{verb}"))
        })
    })
}

/// The built-in roles every organization has.
pub const BUILTIN_ROLES: &[&str] = &["admin", "member", "viewer"];

/// The permissions of a built-in role.
pub fn builtin_role(name: &str) -> Option<Vec<String>> {
    match name {
        // Everything within the organization.
        "admin" => Some(vec!["*".to_owned()]),
        // Uses every service; reads the organization's identity objects but does not manage
        // principals, roles, bindings or keys.
        "member" => Some(
            SERVICES
                .iter()
                .filter(|(s, _)| *s != "iam")
                .map(|(s, _)| format!("{s}.*"))
                .chain(
                    ["org", "project", "user", "sa", "group", "role", "binding"]
                        .iter()
                        .flat_map(|r| [format!("iam.{r}.get"), format!("iam.{r}.list")]),
                )
                .collect(),
        ),
        // Reads everything, changes nothing.
        "viewer" => Some(
            all_permissions()
                .filter(|p| p.ends_with(".get") || p.ends_with(".list"))
                .filter(|p| !p.starts_with("iam.credential.") && !p.starts_with("iam.audit."))
                .collect(),
        ),
        _ => None,
    }
}

pub const MAX_NAME: usize = 63;

/// Names of orgs, projects, principals, groups and roles: 1–63 characters of lowercase
/// letters, digits and `-`, starting with a letter (DNS-label-like, safe in URLs and logs).
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} name {:?}: 1-{MAX_NAME} lowercase letters, digits or '-', starting with a letter",
            truncate(name, 80)
        ))
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uc_runtime::token::permission_matches;

    #[test]
    fn permissions_must_exist() {
        for ok in [
            "*",
            "plasmavmc.*",
            "plasmavmc.vm.*",
            "plasmavmc.vm.create",
            "iam.key.rotate",
        ] {
            assert!(is_valid_permission(ok), "{ok}");
        }
        for bad in [
            "",
            "plasmavmc",
            "plasmavmc.vm",
            "plasmavmc.vm.fly",
            "nosuch.*",
            "plasmavmc.*.create",
            "a.b.c.d",
            "plasmavmc.vm.create ",
        ] {
            assert!(!is_valid_permission(bad), "{bad:?}");
        }
    }

    #[test]
    fn builtin_roles_grant_what_they_say() {
        let grants = |role: &str, perm: &str| {
            builtin_role(role)
                .unwrap()
                .iter()
                .any(|p| permission_matches(p, perm))
        };
        assert!(grants("admin", "iam.binding.create"));
        assert!(grants("member", "plasmavmc.vm.create"));
        assert!(!grants("member", "iam.binding.create"));
        assert!(grants("member", "iam.project.list"));
        assert!(grants("viewer", "plasmavmc.vm.get"));
        assert!(!grants("viewer", "plasmavmc.vm.create"));
        assert!(!grants("viewer", "iam.credential.list"));
        for role in BUILTIN_ROLES {
            for p in builtin_role(role).unwrap() {
                assert!(is_valid_permission(&p), "{role}: {p}");
            }
        }
    }

    #[test]
    fn names() {
        assert!(check_name("org", "acme-1").is_ok());
        for bad in ["", "Acme", "1acme", "a_b", &"a".repeat(64), "a b", "ä"] {
            assert!(check_name("org", bad).is_err(), "{bad:?}");
        }
    }
}
