{
  description = "FlareDB: a gRPC-first distributed key-value store (rdb-pd, rdb-server, rdb-cli, rdb-bench)";

  # Not evaluated in this project's CI (no network for Nix inputs there); kept
  # correct by reading. `nix flake update` re-pins flake.lock.
  #
  #   nix develop   # shell with the Rust toolchain, clang, libclang, pkg-config,
  #                 # protoc (etcd-client's build) and etcd (rdb-bench's smoke test)
  #   nix build     # builds the workspace binaries into ./result/bin
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";
    # nixos-24.11 ships a Rust older than the workspace's rust-version (1.89),
    # so the toolchain comes from rust-overlay.
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, rust-overlay }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system:
        f (import nixpkgs {
          inherit system;
          overlays = [ rust-overlay.overlays.default ];
        }));

      # Pinned to the workspace's rust-version (Cargo.toml).
      toolchainFor = pkgs: pkgs.rust-bin.stable."1.89.0".default.override {
        extensions = [ "rust-src" "clippy" "rustfmt" ];
      };

      # librocksdb-sys compiles RocksDB from C++ and runs bindgen, which loads
      # libclang at build time.
      libclangPath = pkgs: "${pkgs.llvmPackages.libclang.lib}/lib";
    in
    {
      packages = forAllSystems (pkgs:
        let
          toolchain = toolchainFor pkgs;
          rustPlatform = pkgs.makeRustPlatform {
            cargo = toolchain;
            rustc = toolchain;
          };
        in
        {
          default = rustPlatform.buildRustPackage {
            pname = "flaredb";
            version = "0.1.0";
            src = self;
            cargoLock.lockFile = ./Cargo.lock;

            nativeBuildInputs = [
              pkgs.clang
              pkgs.pkg-config
              pkgs.protobuf
              rustPlatform.bindgenHook
            ];
            LIBCLANG_PATH = libclangPath pkgs;
            # etcd-client (rdb-bench's etcd adapter) compiles etcd's protos with protoc.
            PROTOC = "${pkgs.protobuf}/bin/protoc";

            cargoBuildFlags = [ "--workspace" "--bins" ];
            # The test suite starts real daemons on loopback ports; run it
            # with `bash scripts/test.sh`, not inside the Nix sandbox.
            doCheck = false;

            meta = {
              description = "FlareDB daemons (rdb-pd, rdb-server), command line (rdb-cli) and benchmark tool (rdb-bench)";
              license = pkgs.lib.licenses.asl20;
              mainProgram = "rdb-cli";
              platforms = pkgs.lib.platforms.linux;
            };
          };
        });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (toolchainFor pkgs) # rustc, cargo, clippy, rustfmt, rust-src
            pkgs.clang
            pkgs.llvmPackages.libclang
            pkgs.pkg-config
            pkgs.protobuf
            pkgs.etcd
          ];
          LIBCLANG_PATH = libclangPath pkgs;
          PROTOC = "${pkgs.protobuf}/bin/protoc";
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}
