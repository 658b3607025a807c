//! Generated documentation: shell completions (`clap_complete`) and man pages
//! (`clap_mangen`, roff), both from berthctl's own clap definition, so they
//! never drift from the flags. `scripts/install.sh` installs what these write.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Writes the completion script for `shell` to `out`.
pub fn completions<C: CommandFactory>(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = C::command();
    clap_complete::generate(shell, &mut cmd, "berthctl", out);
}

/// Writes `berthctl.1` and one `berthctl-SUBCOMMAND.1` per subcommand into `dir`.
pub fn man_pages<C: CommandFactory>(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = C::command();
    let mut written = Vec::new();
    let mut render = |cmd: clap::Command, name: String| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .title(name.to_uppercase())
            .section("1")
            .render(&mut buf)
            .with_context(|| format!("rendering {name}"))?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("berthctl-{}", sub.get_name());
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        render(sub.clone().name(leaked), name)?;
    }
    render(cmd, "berthctl".into())?;
    Ok(written)
}
