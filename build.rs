//! Generates the etcd v3 API types (`src/etcd/pb.rs` includes them) from the
//! project's own schema in `proto/`, with no system package: `protox` parses
//! the `.proto` files in Rust, `tonic-prost-build` turns the descriptors into
//! prost messages, tonic clients and server traits, and `pbjson-build` adds
//! protobuf-JSON serde impls for the HTTP gateway (proto field names, as
//! etcd's gateway prints them).

use std::path::PathBuf;

/// The schema files, relative to `proto/` (the import root).
const PROTOS: &[&str] = &[
    "etcd/api/mvccpb/kv.proto",
    "etcd/api/authpb/auth.proto",
    "etcd/api/etcdserverpb/rpc.proto",
];

/// The protobuf packages the files declare.
const PACKAGES: &[&str] = &[".mvccpb", ".authpb", ".etcdserverpb"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for file in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true);
    compiler.open_files(PROTOS)?;
    let descriptors = compiler.file_descriptor_set();
    let encoded = compiler.encode_file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out)
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .out_dir(&out)
        .preserve_proto_field_names()
        .build(PACKAGES)?;
    Ok(())
}
