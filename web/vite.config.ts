// Builds the console into dist/, which is committed and embedded in the orchestrator
// (orchestrator/build.rs). `npm run dev` serves it with hot reload and sends the API's
// gRPC-Web calls to an orchestrator on RPAFLOW_SERVER (default http://127.0.0.1:50051).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { defineConfig, type Plugin } from "vite";

/// Writes NAME.gz beside each built script and stylesheet: the orchestrator sends it to browsers
/// that accept gzip (orchestrator/src/console.rs), a third of the size.
function gzipped(): Plugin {
  return {
    name: "rpaflow-gzip",
    apply: "build",
    writeBundle(options, bundle) {
      for (const [name, item] of Object.entries(bundle)) {
        if (!/\.(js|css)$/.test(name)) continue;
        const data = item.type === "chunk" ? item.code : item.source;
        writeFileSync(join(options.dir ?? "dist", `${name}.gz`), gzipSync(data, { level: 9 }));
      }
    },
  };
}

const server = process.env.RPAFLOW_SERVER ?? "http://127.0.0.1:50051";

export default defineConfig({
  plugins: [gzipped()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    reportCompressedSize: true,
    sourcemap: false,
  },
  server: {
    proxy: {
      "/rpaflow.v1.FlowService": server,
      "/rpaflow.v1.AuthService": server,
    },
  },
});
