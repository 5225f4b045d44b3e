#!/usr/bin/env node
// Launcher: the CLI is TypeScript run through tsx's ESM loader (no build step in this repository).
import { register } from "tsx/esm/api";

register();
await import("../src/main.ts");
