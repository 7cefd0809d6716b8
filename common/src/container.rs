//! The container or pod a process runs in, read from its cgroup path: the
//! names people look for on a container host, where the command line alone
//! (`java -jar app.jar`) names nothing.
//!
//! The shapes read, cgroup v2 and v1 alike (the path of the process's
//! cgroup, as `/proc/PID/cgroup` gives it):
//! - systemd's cgroup driver: a `.scope` named `RUNTIME-ID.scope`
//!   (`docker-`, `cri-containerd-`, `crio-`, `libpod-` for podman,
//!   `containerd-`), under `kubepods-…-pod<UID>.slice` for a pod (the UID's
//!   dashes written as underscores there);
//! - the cgroupfs driver: `/docker/ID`, `/kubepods/<class>/pod<UID>/ID`
//!   (and `/kubepods/pod<UID>/ID` for guaranteed pods).

use serde::{Deserialize, Serialize};

/// A container (and its pod, under Kubernetes) named by its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// `docker`, `containerd`, `cri-o`, `podman`; `None` where the path
    /// names no runtime (the cgroupfs driver under Kubernetes).
    pub runtime: Option<String>,
    /// The container's id as the runtime shows it (64 hex digits).
    pub id: String,
    /// The pod's UID, under Kubernetes.
    pub pod_uid: Option<String>,
}

impl Container {
    /// The container of a process whose cgroup is `path`; `None` for a
    /// process outside any container (a service, a user session).
    pub fn from_cgroup(path: &str) -> Option<Container> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let pod_uid = parts.iter().find_map(|p| pod_uid(p));
        let last = parts.last()?;
        // systemd driver: RUNTIME-ID.scope
        if let Some(scope) = last.strip_suffix(".scope") {
            for (prefix, runtime) in [
                ("docker-", "docker"),
                ("cri-containerd-", "containerd"),
                ("containerd-", "containerd"),
                ("crio-", "cri-o"),
                ("libpod-", "podman"),
            ] {
                if let Some(id) = scope.strip_prefix(prefix).filter(|id| is_id(id)) {
                    return Some(Container {
                        runtime: Some(runtime.into()),
                        id: id.into(),
                        pod_uid,
                    });
                }
            }
            return None;
        }
        // cgroupfs driver: /docker/ID, /kubepods/.../pod<UID>/ID
        if !is_id(last) {
            return None;
        }
        let parent = parts.len().checked_sub(2).map(|i| parts[i]);
        let runtime = match parent {
            Some("docker") => Some("docker".to_string()),
            _ if pod_uid.is_some() => None,
            _ => return None,
        };
        Some(Container {
            runtime,
            id: (*last).into(),
            pod_uid,
        })
    }

    /// `docker 1a2b3c4d5e6f`, `containerd 1a2b3c4d5e6f in pod 8d3f…`: the
    /// id cut to the twelve digits runtimes print.
    pub fn short(&self) -> String {
        let id: String = self.id.chars().take(12).collect();
        let mut s = match &self.runtime {
            Some(r) => format!("{r} {id}"),
            None => format!("container {id}"),
        };
        if let Some(pod) = &self.pod_uid {
            s.push_str(" in pod ");
            s.push_str(pod);
        }
        s
    }
}

/// A container id: 64 hex digits.
fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod UID of a path component `pod<UID>` (cgroupfs) or
/// `kubepods-<class>-pod<UID>.slice` (systemd, `_` for `-`).
fn pod_uid(part: &str) -> Option<String> {
    let rest = part.strip_suffix(".slice").unwrap_or(part);
    let at = rest.rfind("pod")?;
    // `kubepods` itself is not a pod: the UID follows the last `pod`.
    let uid = &rest[at + 3..];
    let uid = uid.replace('_', "-");
    let looks = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    looks.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f6bd4a5e0c0a9d8b7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4";
    const POD: &str = "8d3f1a2b-3c4d-5e6f-7a8b-9c0d1e2f3a4b";

    fn c(runtime: Option<&str>, pod: Option<&str>) -> Option<Container> {
        Some(Container {
            runtime: runtime.map(Into::into),
            id: ID.into(),
            pod_uid: pod.map(Into::into),
        })
    }

    #[test]
    fn containers_and_pods_are_named_from_every_driver_s_paths() {
        let pod_ = POD.replace('-', "_");
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), c(Some("docker"), None)),
            (format!("/docker/{ID}"), c(Some("docker"), None)),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                c(Some("podman"), None),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_}.slice/cri-containerd-{ID}.scope"
                ),
                c(Some("containerd"), Some(POD)),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{pod_}.slice/crio-{ID}.scope"),
                c(Some("cri-o"), Some(POD)),
            ),
            (
                format!("/kubepods/besteffort/pod{POD}/{ID}"),
                c(None, Some(POD)),
            ),
            (format!("/kubepods/pod{POD}/{ID}"), c(None, Some(POD))),
        ];
        for (path, want) in cases {
            assert_eq!(Container::from_cgroup(&path), want, "{path}");
        }
    }

    #[test]
    fn services_sessions_and_near_misses_are_no_container() {
        for path in [
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/docker.service",
            "/kubepods.slice",
            "/system.slice/docker-1234.scope",
            "/docker/not-an-id",
            &format!("/other/{ID}"),
            "",
            "/",
        ] {
            assert_eq!(Container::from_cgroup(path), None, "{path:?}");
        }
    }

    #[test]
    fn the_short_form_is_what_runtimes_print() {
        let k8s = Container::from_cgroup(&format!("/kubepods/burstable/pod{POD}/{ID}"));
        assert_eq!(
            k8s.map(|c| c.short()),
            Some(format!("container 4f6bd4a5e0c0 in pod {POD}"))
        );
        let docker = Container::from_cgroup(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(
            docker.map(|c| c.short()).as_deref(),
            Some("docker 4f6bd4a5e0c0")
        );
    }
}
