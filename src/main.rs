use std::path::PathBuf;

use clap::{Parser, Subcommand};
use entitlements::auth::issue_token;
use entitlements::configuration::Settings;
use entitlements::startup::Application;
use entitlements::telemetry;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sells one-time packs through Stripe and turns payments into live
/// per-org entitlements.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a signed access token for an org (development and tests).
    Token {
        #[arg(long)]
        org: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Token { org, ttl_secs }) => {
            if actors::org_id::OrgId::parse(&org).is_err() {
                eprintln!("--org must be 1 to 64 of A-Za-z0-9_-");
                return std::process::ExitCode::from(2);
            }
            println!(
                "{}",
                issue_token(settings.auth.jwt_secret.expose(), &org, ttl_secs)
            );
            std::process::ExitCode::SUCCESS
        }
        None => serve(settings),
    }
}

/// mimalloc marks its memory for transparent huge pages, and with THP in
/// the common `madvise` mode every first touch of such memory then zeroes
/// 2 MiB. Under webhook load that zeroing was about 7% of the service's CPU
/// and its peak memory about 1.5x what it is with small pages (README,
/// Performance), so the process opts out before the runtime starts.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory
    // of ours; on failure (an old kernel) THP simply stays as it was.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn serve(settings: Settings) -> std::process::ExitCode {
    let _log_writer = telemetry::init(settings.logging.format);
    let result = actix::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        tracing::info!(port = app.port(), "listening");
        app.run_until_stopped().await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
