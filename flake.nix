{
  description = "FlareDB: a gRPC-first distributed key-value store";

  # Not evaluated in the project's CI (no network for Nix inputs there); kept
  # correct by reading. `nix flake update` refreshes flake.lock.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, rust-overlay }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system:
        f (import nixpkgs {
          inherit system;
          overlays = [ rust-overlay.overlays.default ];
        }));
      # The workspace needs Rust 1.89 or newer (rust-version in Cargo.toml).
      toolchain = pkgs: pkgs.rust-bin.stable.latest.default.override {
        extensions = [ "rust-src" "clippy" "rustfmt" ];
      };
    in
    {
      packages = forAll (pkgs:
        let
          rustPlatform = pkgs.makeRustPlatform {
            cargo = toolchain pkgs;
            rustc = toolchain pkgs;
          };
        in
        {
          default = rustPlatform.buildRustPackage {
            pname = "flaredb";
            version = "0.1.0";
            src = self;
            cargoLock.lockFile = ./Cargo.lock;
            # librocksdb-sys compiles RocksDB from source and runs bindgen.
            nativeBuildInputs = [ pkgs.clang rustPlatform.bindgenHook ];
            LIBCLANG_PATH = "${pkgs.llvmPackages.libclang.lib}/lib";
            cargoBuildFlags = [ "--workspace" "--bins" ];
            # The integration tests start daemons on loopback ports; run them
            # with `bash scripts/test.sh` instead of inside the Nix sandbox.
            doCheck = false;
            meta = {
              description = "FlareDB daemons (rdb-pd, rdb-server) and rdb-cli";
              license = pkgs.lib.licenses.asl20;
              mainProgram = "rdb-cli";
            };
          };
        });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (toolchain pkgs)
            pkgs.clang
            pkgs.llvmPackages.libclang
            pkgs.pkg-config
          ];
          LIBCLANG_PATH = "${pkgs.llvmPackages.libclang.lib}/lib";
        };
      });
    };
}
