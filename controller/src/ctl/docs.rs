//! `completion SHELL` and `man DIR`, for berthctl and berthd: generated at run time from
//! the binaries' clap definitions, so a subcommand or flag added later is covered without
//! anyone remembering to.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

use super::CtlError;

/// The completion script of `cmd` for `shell`.
pub fn completion(mut cmd: clap::Command, shell: Shell) -> String {
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes a man page (section 1) for `cmd` and each of its subcommands into `dir`, created
/// if need be: `berthctl.1`, `berthctl-get.1`, `berthctl-get-environments.1`, … Returns
/// the files written, one per line.
///
/// # Errors
/// [`CtlError::Docs`] when the directory or a page cannot be written.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<String, CtlError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| CtlError::Docs { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    // Gives every subcommand its full name (`berthctl-get-environments`).
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)
        .map_err(|(path, source)| CtlError::Docs { path, source })?;
    Ok(written
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect())
}

fn write_pages(
    cmd: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), (PathBuf, std::io::Error)> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page).map_err(|e| (path.clone(), e))?;
    std::fs::write(&path, page).map_err(|e| (path.clone(), e))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// For a binary without subcommands of its own (berthd): when its arguments are
/// `completion SHELL` or `man DIR`, does that for `cmd` and returns the exit code;
/// otherwise `None`, and the binary parses its arguments as usual.
pub fn answer_docs_request(cmd: clap::Command, args: &[OsString]) -> Option<ExitCode> {
    let word = args.get(1)?.to_str()?;
    let operand = args.get(2);
    let result = match (word, operand) {
        ("completion", Some(shell)) => match shell.to_str().and_then(|s| s.parse::<Shell>().ok()) {
            Some(shell) => Ok(completion(cmd, shell)),
            None => {
                eprintln!(
                    "error: unknown shell {shell:?}; expected bash, elvish, fish, powershell or zsh"
                );
                return Some(ExitCode::from(2));
            }
        },
        ("man", Some(dir)) => man_pages(cmd, Path::new(dir)),
        ("completion" | "man", None) => {
            eprintln!(
                "error: usage: {} {word} {}",
                cmd.get_name(),
                if word == "man" { "DIR" } else { "SHELL" }
            );
            return Some(ExitCode::from(2));
        }
        _ => return None,
    };
    match result {
        Ok(text) => {
            print!("{text}");
            Some(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Some(ExitCode::from(e.exit_code()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("tool")
            .about("A tool")
            .subcommand(
                clap::Command::new("get")
                    .about("List things")
                    .subcommand(clap::Command::new("things").about("The things")),
            )
            .subcommand(clap::Command::new("hidden").hide(true))
    }

    #[test]
    fn every_visible_subcommand_gets_a_man_page_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let listed = man_pages(cli(), dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["tool-get-things.1", "tool-get.1", "tool.1"]);
        assert_eq!(listed.lines().count(), 3);
        let page = std::fs::read_to_string(dir.path().join("tool-get-things.1")).unwrap();
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
        assert!(page.contains("The things"), "{page}");
    }

    #[test]
    fn a_binary_without_subcommands_answers_only_completion_and_man() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(answer_docs_request(cli(), &args(&["tool", "--manifests", "x"])).is_none());
        assert!(answer_docs_request(cli(), &args(&["tool"])).is_none());
        assert_eq!(
            answer_docs_request(cli(), &args(&["tool", "completion", "tcsh"])),
            Some(ExitCode::from(2))
        );
    }

    #[test]
    fn completions_name_the_subcommands_for_each_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = completion(cli(), shell);
            assert!(script.contains("things"), "{shell}: {script}");
        }
    }
}
