//! `docs/reference/flags.md`, from the clap definition of the command line.

use std::fmt::Write as _;

use anyhow::Result;
use clap::{Arg, CommandFactory};
use tenant_key_operator::cli::Cli;

use super::{cell, header};

pub fn page() -> Result<String> {
    let command = Cli::command();
    let mut page = header("Command line", "the clap definition in src/cli.rs");
    writeln!(
        page,
        "`{}`: {}\n\nEvery flag can also be set by the environment variable next to it; a flag \
         given on the command line wins.",
        command.get_name(),
        command
            .get_about()
            .map(ToString::to_string)
            .unwrap_or_default()
    )?;
    for subcommand in command.get_subcommands() {
        writeln!(
            page,
            "\n## `{} {}`\n\n{}\n\n| Flag | Environment variable | Default | Description |\n|---|---|---|---|",
            command.get_name(),
            subcommand.get_name(),
            subcommand
                .get_about()
                .map(ToString::to_string)
                .unwrap_or_default()
        )?;
        for arg in long_flags(subcommand) {
            writeln!(
                page,
                "| `--{}` | {} | {} | {} |",
                arg.get_long().unwrap_or_default(),
                arg.get_env()
                    .map(|env| format!("`{}`", env.to_string_lossy()))
                    .unwrap_or_default(),
                default(arg),
                cell(&description(arg))
            )?;
        }
    }
    Ok(page)
}

/// The documented flags of `command`, in the order they are defined.
pub fn long_flags(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some() && !arg.is_hide_set())
}

fn default(arg: &Arg) -> String {
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    if values.is_empty() {
        String::new()
    } else {
        format!("`{}`", values.join(","))
    }
}

/// The flag's help, and the values it accepts when they are a fixed set.
fn description(arg: &Arg) -> String {
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|value| !value.is_hide_set())
        .map(|value| format!("`{}`", value.get_name()))
        .collect();
    if values.is_empty() {
        help
    } else {
        // clap drops the full stop of a one-sentence help.
        format!(
            "{}. One of {}.",
            help.trim_end_matches('.'),
            values.join(", ")
        )
    }
}
