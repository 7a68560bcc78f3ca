// Builds the console into dist/, which is committed and embedded in the orchestrator
// (orchestrator/build.rs). `npm run dev` serves it with hot reload and sends the API's
// gRPC-Web calls to an orchestrator on RPAFLOW_SERVER (default http://127.0.0.1:50051).
import { defineConfig } from "vite";

const server = process.env.RPAFLOW_SERVER ?? "http://127.0.0.1:50051";

export default defineConfig({
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
