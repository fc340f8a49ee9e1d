pub async fn run(_a: crate::cli::BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("bench: not built yet")
}
