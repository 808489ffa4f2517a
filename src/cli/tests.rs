use super::Cli;
use clap::CommandFactory;

/// Every option of every (sub)command has its own long name: a flattened group that repeats
/// one (as `noise --seed` and the config overrides' `--seed` once did) makes clap panic in a
/// debug build and silently drop one of them in a release build, where clap's own
/// `debug_assert` checks are compiled out, so they are checked here.
#[test]
fn option_names_are_unique_in_every_command() {
    fn check(cmd: &clap::Command, path: &str) -> usize {
        let mut seen = std::collections::HashSet::new();
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(seen.insert(long), "`{path}` has --{long} twice");
            }
        }
        let subs: usize = cmd
            .get_subcommands()
            .map(|s| check(s, &format!("{path} {}", s.get_name())))
            .sum();
        1 + subs
    }
    // Every subcommand is reached: noisescale and its 11 commands and nested ones.
    assert!(check(&Cli::command(), "noisescale") >= 12);
}
