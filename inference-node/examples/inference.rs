//! The inference node's commands on their own, for trying the crate without the `rpaflow` binary
//! (which mounts the same commands): `cargo run --release -p rpaflow-inference-node --example
//! inference -- bench-inference --model DIR`.

use rpaflow_inference_node::cli;

#[derive(Debug, clap::Parser)]
#[command(name = "inference", about = "rpaflow inference node commands")]
enum Command {
    /// Serve a GPT-2 model over gRPC.
    Inference(cli::InferenceArgs),
    /// Generate text on an inference node.
    Generate(cli::GenerateArgs),
    /// Measure throughput: C concurrent requests against one at a time.
    BenchInference(cli::BenchInferenceArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry =
        rpaflow_core::telemetry::init_telemetry(&Default::default(), "rpaflow-inference");
    match <Command as clap::Parser>::parse() {
        Command::Inference(args) => {
            let config = args.apply(&Default::default())?;
            cli::serve(&config, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?
        }
        Command::Generate(args) => cli::generate(args).await?,
        Command::BenchInference(args) => cli::bench_inference(args).await?,
    }
    Ok(())
}
