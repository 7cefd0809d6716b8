//! Builds the BPF iter/tcp program (bpf/tcp_iter.bpf.c) when the tools are
//! here: `bpftool` writes the build host's kernel types to vmlinux.h, clang
//! compiles the CO-RE object, and the agent embeds it. Without clang,
//! bpftool, the libbpf headers or kernel BTF the build still succeeds: the
//! embedded object is empty and the probe reports itself unavailable with
//! the reason written here (`tcp_iter.status`).
//!
//! `TCPSTALL_CLANG` and `TCPSTALL_BPFTOOL` name the tools; `TCPSTALL_NO_BPF=1`
//! builds without the probe on purpose.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "bpf/tcp_iter.bpf.c";
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["TCPSTALL_CLANG", "TCPSTALL_BPFTOOL", "TCPSTALL_NO_BPF"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let object = out.join("tcp_iter.bpf.o");
    let status = out.join("tcp_iter.status");
    let result = build(&out, &object);
    let reason = match &result {
        Ok(()) => String::new(),
        Err(why) => {
            println!("cargo:warning=BPF probe not built: {why}");
            // An empty object: the agent reads it as "not built".
            let _ = fs::write(&object, b"");
            why.clone()
        }
    };
    if let Err(e) = fs::write(&status, reason) {
        panic!("writing {}: {e}", status.display());
    }
}

fn build(out: &Path, object: &Path) -> Result<(), String> {
    if env::var_os("TCPSTALL_NO_BPF").is_some_and(|v| v == "1") {
        return Err("built with TCPSTALL_NO_BPF=1".into());
    }
    let clang = tool("TCPSTALL_CLANG", &["clang"]).ok_or("clang not found")?;
    let bpftool = tool("TCPSTALL_BPFTOOL", &["bpftool"]).ok_or("bpftool not found")?;
    if !Path::new(KERNEL_BTF).exists() {
        return Err(format!(
            "{KERNEL_BTF} is missing: the build host's kernel has no BTF"
        ));
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        return Err("libbpf headers (/usr/include/bpf, Debian's libbpf-dev) not found".into());
    }

    let vmlinux =
        run(Command::new(&bpftool).args(["btf", "dump", "file", KERNEL_BTF, "format", "c"]))?;
    fs::write(out.join("vmlinux.h"), vmlinux).map_err(|e| format!("writing vmlinux.h: {e}"))?;

    let full = out.join("tcp_iter.full.o");
    run(Command::new(&clang)
        .args([
            "-g", "-O2", "-Wall", "-Werror", "-target", "bpf", "-c", SOURCE, "-o",
        ])
        .arg(&full)
        .arg("-I")
        .arg(out))?;
    // Drop the DWARF (BTF stays): 650 KiB -> 30 KiB in the binary.
    let stripped = tool("LLVM_STRIP", &["llvm-strip", "llvm-strip-14"])
        .map(|strip| {
            run(Command::new(strip)
                .arg("-g")
                .arg(&full)
                .arg("-o")
                .arg(object))
        })
        .is_some_and(|r| r.is_ok());
    if !stripped {
        fs::copy(&full, object).map_err(|e| format!("copying the object: {e}"))?;
    }
    Ok(())
}

/// The tool named by `var`, else the first of `names` on PATH or in the
/// sbin directories (Debian puts bpftool in /usr/sbin).
fn tool(var: &str, names: &[&str]) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed={var}");
    if let Some(p) = env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs =
        env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    let dirs: Vec<PathBuf> = dirs.collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{shown}: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
