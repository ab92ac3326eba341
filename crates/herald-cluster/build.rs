//! Generates the gRPC code for `proto/herald_cluster.proto` with the protoc shipped in `protoc-bin-vendored`,
//! so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto = proto_dir.join("herald_cluster.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Items stay `Bytes` end to end: decoding a push slices the received buffer instead of copying each item.
        .bytes(".herald.cluster.v1.Push.items")
        .compile_with_config(config, &[proto], &[proto_dir])?;
    Ok(())
}
