//! tote-image: drives Tote's image library from the command line until
//! toted and the tote CLI exist (issue 4). Same store, same code paths.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use toted::images::{ImageStore, Progress, PullOptions};
use toted::manifest::Platform;
use toted::registry::{Credentials, RegistryConfig};

#[derive(Parser)]
#[command(name = "tote-image", version, about = "Pull, list, inspect and remove images in Tote's store")]
struct Cli {
    /// The store's directory (default: /var/lib/tote as root, else a rootless toted's,
    /// $XDG_DATA_HOME/tote)
    #[arg(long)]
    root: Option<PathBuf>,
    /// Registry configuration: mirrors, insecure registries, credentials (default:
    /// /etc/tote/registries.toml as root, else $XDG_CONFIG_HOME/tote/registries.toml)
    #[arg(long)]
    registries: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pull an image from its registry (or a mirror).
    Pull {
        reference: String,
        /// os/arch[/variant] (default: this machine's).
        #[arg(long)]
        platform: Option<String>,
        /// user:password for this pull.
        #[arg(long)]
        creds: Option<String>,
        /// Layers fetched at once.
        #[arg(long, default_value_t = 3)]
        concurrency: usize,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List images.
    Ls,
    /// Show an image's record as JSON.
    Inspect { reference: String },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Remove an image name and everything only it used.
    Rm { reference: String },
    /// Delete blobs and snapshots no image uses.
    Gc,
    /// Disk usage of the store.
    Df,
    /// Load images from a docker save tarball or an OCI layout (dir or tar).
    Load {
        archive: PathBuf,
        /// Name for an image the archive leaves unnamed.
        #[arg(long)]
        name: Option<String>,
    },
    /// Save images as an archive docker and OCI tools load.
    Save {
        #[arg(short, long)]
        output: PathBuf,
        references: Vec<String>,
    },
    /// Build the busybox image from a static busybox (no network needed).
    Busybox {
        #[arg(long, default_value = "/bin/busybox")]
        binary: PathBuf,
        #[arg(long, default_value = "busybox:latest")]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tote-image: {message}");
            ExitCode::FAILURE
        }
    }
}

fn registry_config(path: &std::path::Path) -> Result<RegistryConfig, String> {
    if path.exists() { RegistryConfig::load(path).map_err(|e| e.to_string()) } else { Ok(RegistryConfig::default()) }
}

/// The store and registry file a toted of this user would use: root's
/// fixed paths for real root, else the XDG ones a rootless toted takes
/// (an ordinary user cannot write /var/lib/tote; root of a user namespace
/// is a rootless toted's user there).
fn default_paths() -> Result<(PathBuf, PathBuf), String> {
    if nix::unistd::Uid::effective().is_root() && tote_shim::namespaces::in_initial_user_ns() {
        return Ok((PathBuf::from("/var/lib/tote"), PathBuf::from("/etc/tote/registries.toml")));
    }
    let dirs = toted::privilege::RootlessDirs::from_env()?;
    let config_dir = dirs.config.parent().map_or_else(|| dirs.config.clone(), std::path::Path::to_path_buf);
    Ok((dirs.data, config_dir.join("registries.toml")))
}

async fn run(cli: Cli) -> Result<(), String> {
    let (root, registries) = match (cli.root, cli.registries) {
        (Some(root), Some(registries)) => (root, registries),
        (root, registries) => {
            let (default_root, default_registries) = default_paths()?;
            (root.unwrap_or(default_root), registries.unwrap_or(default_registries))
        }
    };
    let store = Arc::new(ImageStore::open(&root, registry_config(&registries)?).map_err(|e| e.to_string())?);
    match cli.command {
        Command::Pull { reference, platform, creds, concurrency, quiet } => {
            let platform = match platform {
                Some(p) => Platform::parse(&p).ok_or(format!("--platform {p:?} is not os/arch[/variant]"))?,
                None => Platform::host(),
            };
            let credentials = match creds {
                Some(c) => {
                    let (username, password) = c.split_once(':').ok_or("--creds takes user:password")?;
                    Some(Credentials { username: username.into(), password: password.into() })
                }
                None => None,
            };
            let progress: Option<toted::images::ProgressFn> = (!quiet).then(|| Arc::new(print_progress) as _);
            let opts = PullOptions { platform, credentials, concurrency, progress, ..PullOptions::default() };
            let image = store.pull(&reference, &opts).await.map_err(|e| e.to_string())?;
            println!("{} {}", image.name, image.target);
        }
        Command::Ls => {
            println!("{:<60} {:<20} {:>10}", "NAME", "DIGEST", "SIZE");
            for image in store.list().map_err(|e| e.to_string())? {
                println!("{:<60} {:<20} {:>10}", image.name, short(&image.target.to_string()), human(image.size()));
            }
        }
        Command::Inspect { reference } => {
            let image = store.get(&reference).map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&image).expect("image record serialises"));
        }
        Command::Tag { source, target } => {
            store.tag(&source, &target).map_err(|e| e.to_string())?;
        }
        Command::Rm { reference } => {
            let report = store.remove(&reference).map_err(|e| e.to_string())?;
            println!(
                "removed; freed {} blobs ({}) and {} snapshots",
                report.blobs,
                human(report.bytes),
                report.snapshots
            );
        }
        Command::Gc => {
            let report = store.gc().map_err(|e| e.to_string())?;
            println!("freed {} blobs ({}) and {} snapshots", report.blobs, human(report.bytes), report.snapshots);
        }
        Command::Load { archive, name } => {
            for image in toted::archive::import(&store, &archive, name.as_deref()).await.map_err(|e| e.to_string())? {
                println!("loaded {} {}", image.name, image.manifest);
            }
        }
        Command::Save { output, references } => {
            if references.is_empty() {
                return Err("save needs at least one image".into());
            }
            let tmp = output.with_extension("tote-tmp");
            let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
            toted::archive::export(&store, &references, std::io::BufWriter::new(file)).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &output).map_err(|e| format!("{}: {e}", output.display()))?;
        }
        Command::Busybox { binary, name } => {
            let image = toted::archive::build_busybox(&store, &binary, &name).await.map_err(|e| e.to_string())?;
            println!("{} {}", image.name, image.manifest);
        }
        Command::Df => {
            let usage = store.disk_usage().map_err(|e| e.to_string())?;
            println!(
                "images {}\nblobs {}\nsnapshots {}\npartial downloads {}",
                usage.images,
                human(usage.blobs),
                human(usage.snapshots),
                human(usage.partial_downloads)
            );
        }
    }
    Ok(())
}

fn print_progress(event: &Progress) {
    match event {
        Progress::Resolved { name, digest } => eprintln!("{name}: resolved {digest}"),
        Progress::Layer { digest, done, total } if done == total => {
            eprintln!("{}: downloaded {}", short(&digest.to_string()), human(*total))
        }
        Progress::Layer { .. } => {}
        Progress::LayerReady { digest, reused } => {
            eprintln!("{}: {}", short(&digest.to_string()), if *reused { "already present" } else { "unpacked" });
        }
    }
}

fn short(digest: &str) -> String {
    digest.split_once(':').map_or(digest, |(_, hex)| hex).chars().take(12).collect()
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", units[unit]) }
}
