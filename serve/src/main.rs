//! `casstack-serve`: an HTTP build cache speaking bazel-remote's HTTP protocol, built from a
//! casstack layout. Bazel (`--remote_cache=http://127.0.0.1:8080`) and ccache
//! (`remote_storage = http://127.0.0.1:8080|layout=bazel`) use it as is.
//!
//! `cargo run --release -p casstack-serve -- --help` lists the flags; [`server`] describes the
//! protocol, [`layout`] the layout file.
#![forbid(unsafe_code)]

mod body;
mod cli;
mod layout;
mod server;
mod sizes;

use std::convert::Infallible;
use std::fmt::Debug;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use casstack::{BoxStore, FromSpec as _, Metrics, MetricsConfig, Store, StoreExt as _};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::cli::{Args, Exit, USAGE};
use crate::layout::{DEFAULT_LAYOUT, DefaultStore, Layout};
use crate::server::Server;

/// How long a client may take to send a request's headers before its connection is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the Prometheus recorder folds its histogram samples into summaries.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(Exit::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(Exit::Usage(message)) => {
            eprintln!("casstack-serve: {message}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Before any store is built: stores register their metrics when they are built.
    let metrics = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("casstack-serve: cannot install the metrics recorder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("casstack-serve: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args, metrics));
    // Tasks still running (uploads past the grace period) are dropped here: their stores'
    // atomic puts leave nothing behind.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("casstack-serve: {message}");
            ExitCode::FAILURE
        }
    }
}

fn open_error(what: &'static str) -> impl Fn(casstack::Error) -> String {
    move |e| format!("opening the {what}: {e}")
}

/// Opens the layout's stores and serves them until a shutdown signal.
async fn run(args: Args, metrics: PrometheusHandle) -> Result<(), String> {
    let Some(path) = &args.layout else {
        let Layout::Shared(spec) = Layout::parse(DEFAULT_LAYOUT, &args.data)? else {
            unreachable!("the built-in layout is one store node");
        };
        let store = DefaultStore::from_spec(&spec)
            .await
            .map_err(open_error("store"))?;
        return serve(
            store.clone(),
            store,
            true,
            "built in (layouts/local.toml)",
            &args,
            metrics,
        )
        .await;
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the layout {}: {e}", path.display()))?;
    let layout =
        Layout::parse(&text, &args.data).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path.display().to_string();
    match layout {
        Layout::Shared(spec) => {
            let store = BoxStore::from_spec(&spec)
                .await
                .map_err(open_error("store"))?;
            serve(store.clone(), store, true, &name, &args, metrics).await
        }
        Layout::Split { cas, ac } => {
            let cas = BoxStore::from_spec(&cas)
                .await
                .map_err(open_error("CAS store"))?;
            let ac = BoxStore::from_spec(&ac)
                .await
                .map_err(open_error("AC store"))?;
            serve(cas, ac, false, &name, &args, metrics).await
        }
    }
}

/// Serves `cas` and `ac` (`shared`: one store under both names) on `args.addr`, each metered
/// under its name (`store="cas"`, `store="ac"` on `/metrics`).
async fn serve<C, A>(
    cas: C,
    ac: A,
    shared: bool,
    layout: &str,
    args: &Args,
    metrics: PrometheusHandle,
) -> Result<(), String>
where
    C: Store + Debug,
    A: Store + Debug,
{
    check_takes_names(&ac).await?;
    let mut signal = ShutdownSignal::install()?;
    let listener = TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    println!("casstack-serve listening on http://{addr}");
    println!("layout: {layout}");
    if shared {
        println!("  store (CAS by digest, AC by name): {cas:?}");
    } else {
        println!("  cas: {cas:?}");
        println!("  ac: {ac:?}");
    }
    println!("data: {}", args.data.display());

    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let cas = Metrics::new(cas, MetricsConfig { name: "cas".into() });
    let ac = Metrics::new(ac, MetricsConfig { name: "ac".into() });
    let server = Arc::new(
        Server::new(cas, ac)
            .with_metrics(metrics)
            .with_upload_idle_timeout(args.upload_idle_timeout),
    );
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                let service = service_fn(move |request| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(request).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("connection ended with an error: {e}");
                    }
                });
            }
            () = signal.recv() => break,
        }
    }
    drop(listener);
    let grace = args.grace;
    println!("shutting down: no new connections; in-flight requests have {grace:?} to finish");
    tokio::select! {
        () = graceful.shutdown() => println!("shut down cleanly"),
        () = tokio::time::sleep(grace) => {
            println!("shut down: in-flight requests aborted after {grace:?} (their uploads stored nothing)");
        }
        () = signal.recv() => {
            println!("shut down: second signal, in-flight requests aborted (their uploads stored nothing)");
        }
    }
    Ok(())
}

/// Refuses, at startup, an AC store that takes no name keys (every AC request would fail).
async fn check_takes_names<A: Store>(ac: &A) -> Result<(), String> {
    match ac.has(casstack::Key::from("ac/startup-check")).await {
        Err(e) if e.code() == casstack::Code::InvalidArgument => Err(format!(
            "the layout's AC store takes no name keys ({e}); give the AC a store of its own \
             with [cas] and [ac] tables (see serve/layouts/split.toml)"
        )),
        Err(e) => Err(format!("the AC store does not answer: {e}")),
        Ok(_) => Ok(()),
    }
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is created (before the server
/// says it listens), so a signal sent as soon as it does is never missed.
struct ShutdownSignal {
    #[cfg(unix)]
    signals: [tokio::signal::unix::Signal; 2],
}

impl ShutdownSignal {
    #[cfg(unix)]
    fn install() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
        Ok(ShutdownSignal {
            signals: [
                install(SignalKind::interrupt())?,
                install(SignalKind::terminate())?,
            ],
        })
    }

    #[cfg(not(unix))]
    fn install() -> Result<Self, String> {
        Ok(ShutdownSignal {})
    }

    /// Waits for the next signal.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let [interrupt, terminate] = &mut self.signals;
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
