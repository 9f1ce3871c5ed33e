fn main() -> std::process::ExitCode {
    tenant_key_operator::cli::main()
}
