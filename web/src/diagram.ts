// A flow drawn as a DAG in SVG: steps in layers by their `needs` (top to bottom), edges from
// each need, dashed edges to compensation steps. The layout depends on the definition alone,
// so a run's updates only change each step's colour and status text: nothing moves.
import type { FlowDefinition } from "./gen/rpaflow/v1/flow_pb";

const SVG = "http://www.w3.org/2000/svg";
const W = 180;
const H = 52;
const GAP_X = 28;
const GAP_Y = 40;
const PAD = 12;
const LANE = 20;

export interface StepState {
  /// `pending`, `running`, `succeeded`, ... (the StepStatus names in lower case).
  status: string;
  /// Shown after the status: `2/7` items, `attempt 2`.
  detail?: string;
}

export interface Diagram {
  element: SVGSVGElement;
  update(states: Map<string, StepState>): void;
}

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number>,
): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

interface Placed {
  id: string;
  x: number;
  y: number;
  layer: number;
}

/// Layers by longest path from the roots; within a layer, ordered by where the step's needs
/// are (barycentre), ties kept in definition order. Iterative, linear in steps and edges.
export function layout(def: FlowDefinition): { nodes: Placed[]; width: number; height: number } {
  const steps = def.steps;
  const index = new Map(steps.map((s, i) => [s.id, i]));
  const parents: string[][] = steps.map((s) => s.needs.filter((n) => index.has(n)));
  // A compensation step comes after the step that calls it.
  steps.forEach((s) => {
    const target = s.onFailure.startsWith("compensate:") ? s.onFailure.slice(11) : "";
    const t = index.get(target);
    if (t !== undefined) parents[t].push(s.id);
  });
  // Kahn's order over the edges (the registry refused cycles already).
  const children: number[][] = steps.map(() => []);
  const indegree = parents.map((p) => p.length);
  parents.forEach((ps, i) => ps.forEach((p) => children[index.get(p)!].push(i)));
  const layer = steps.map(() => 0);
  const queue: number[] = [];
  indegree.forEach((d, i) => d === 0 && queue.push(i));
  for (let head = 0; head < queue.length; head++) {
    const i = queue[head];
    for (const c of children[i]) {
      layer[c] = Math.max(layer[c], layer[i] + 1);
      if (--indegree[c] === 0) queue.push(c);
    }
  }
  // Steps that need nothing sit just above their first dependant, not all in the top row
  // (`table` beside `rows` rather than above `collect`), which keeps their edges short.
  for (let k = queue.length - 1; k >= 0; k--) {
    const i = queue[k];
    if (parents[i].length === 0 && children[i].length > 0) {
      layer[i] = Math.max(layer[i], Math.min(...children[i].map((c) => layer[c])) - 1);
    }
  }
  const layers: number[][] = [];
  steps.forEach((_, i) => (layers[layer[i]] ??= []).push(i));
  const column = new Map<number, number>();
  for (const row of layers) {
    if (!row) continue;
    const key = (i: number) => {
      const ps = parents[i].map((p) => column.get(index.get(p)!) ?? 0);
      return ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : i;
    };
    row.sort((a, b) => key(a) - key(b) || a - b);
    row.forEach((i, c) => column.set(i, c));
  }
  const widest = Math.max(1, ...layers.map((r) => r?.length ?? 0));
  // LANE on each side: room for the edges that skip layers (drawn around them).
  const width = (PAD + LANE) * 2 + widest * W + (widest - 1) * GAP_X;
  const nodes: Placed[] = [];
  layers.forEach((row, l) => {
    if (!row) return;
    const rowWidth = row.length * W + (row.length - 1) * GAP_X;
    const left = (width - rowWidth) / 2;
    row.forEach((i, c) =>
      nodes.push({ id: steps[i].id, x: left + c * (W + GAP_X), y: PAD + l * (H + GAP_Y), layer: l }),
    );
  });
  const height = PAD * 2 + layers.length * H + Math.max(0, layers.length - 1) * GAP_Y;
  return { nodes, width, height };
}

/// Draws `def`; each step links to `#step-<id>` when `linkSteps` (the run page's details).
export function drawFlow(def: FlowDefinition, linkSteps: boolean): Diagram {
  const { nodes, width, height } = layout(def);
  const at = new Map(nodes.map((n) => [n.id, n]));
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    class: "diagram",
    role: "img",
    "aria-label": `${def.name}: ${def.steps.length} steps`,
  });
  const defs = svg("defs", {});
  const marker = svg("marker", {
    id: "arrow",
    viewBox: "0 0 10 10",
    refX: 9,
    refY: 5,
    markerWidth: 7,
    markerHeight: 7,
    orient: "auto-start-reverse",
  });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }));
  defs.append(marker);
  root.append(defs);

  // Where the steps of each layer are, to route edges that skip layers around them.
  const byLayer = new Map<number, Placed[]>();
  for (const n of nodes) {
    const row = byLayer.get(n.layer) ?? [];
    row.push(n);
    byLayer.set(n.layer, row);
  }
  const edge = (from: Placed, to: Placed, dashed: boolean) => {
    const x1 = from.x + W / 2;
    const y1 = from.y + H;
    const x2 = to.x + W / 2;
    const y2 = to.y;
    const mid = (y1 + y2) / 2;
    const between: Placed[] = [];
    for (let l = from.layer + 1; l < to.layer; l++) between.push(...(byLayer.get(l) ?? []));
    const hits = between.some((n) => {
      // The straight line's x at that layer's height.
      const t = (n.y + H / 2 - y1) / (y2 - y1);
      const x = x1 + (x2 - x1) * t;
      return x > n.x - 6 && x < n.x + W + 6;
    });
    let d = `M ${x1} ${y1} C ${x1} ${mid} ${x2} ${mid} ${x2} ${y2 - 2}`;
    if (hits) {
      const right = Math.max(...between.map((n) => n.x + W)) + LANE / 2 + 4;
      const left = Math.min(...between.map((n) => n.x)) - LANE / 2 - 4;
      const lane = Math.abs(right - (x1 + x2) / 2) <= Math.abs(left - (x1 + x2) / 2) ? right : left;
      const g = GAP_Y / 2;
      d = `M ${x1} ${y1} C ${x1} ${y1 + g} ${lane} ${y1 + g / 2} ${lane} ${y1 + g} ` +
        `L ${lane} ${y2 - g} C ${lane} ${y2 - g / 2} ${x2} ${y2 - g} ${x2} ${y2 - 2}`;
    }
    root.append(
      svg("path", {
        d,
        class: dashed ? "edge compensation" : "edge",
        "marker-end": "url(#arrow)",
      }),
    );
  };
  for (const s of def.steps) {
    const to = at.get(s.id)!;
    for (const n of s.needs) {
      const from = at.get(n);
      if (from) edge(from, to, false);
    }
    if (s.onFailure.startsWith("compensate:")) {
      const target = at.get(s.onFailure.slice(11));
      if (target) edge(to, target, true);
    }
  }

  const statusText = new Map<string, SVGTextElement>();
  const groups = new Map<string, SVGGElement>();
  for (const s of def.steps) {
    const p = at.get(s.id)!;
    const g = svg("g", {
      class: `node st-pending${s.compensation ? " compensation" : ""}`,
      "data-step": s.id,
      "data-status": "pending",
      transform: `translate(${p.x} ${p.y})`,
    });
    const title = svg("title", {});
    title.textContent = `${s.name || s.id} (${s.uses})${s.if ? `, if ${s.if}` : ""}`;
    g.append(title, svg("rect", { width: W, height: H, rx: 8 }));
    const name = svg("text", { x: 12, y: 21, class: "name" });
    name.textContent = clip(s.id, 22);
    const state = svg("text", { x: 12, y: 40, class: "state" });
    state.textContent = clip(`${s.uses}${s.forEach ? " · for each" : ""}`, 26);
    g.append(name, state);
    statusText.set(s.id, state);
    groups.set(s.id, g);
    if (linkSteps) {
      const a = svg("a", { href: `#step-${s.id}`, class: "node-link" });
      a.append(g);
      root.append(a);
    } else {
      root.append(g);
    }
  }
  const uses = new Map(def.steps.map((s) => [s.id, s.uses]));
  return {
    element: root,
    update(states) {
      for (const [id, g] of groups) {
        const st = states.get(id);
        const status = st?.status ?? "pending";
        if (g.getAttribute("data-status") !== status) {
          g.setAttribute("data-status", status);
          g.setAttribute("class", g.getAttribute("class")!.replace(/st-[a-z_]+/, `st-${status}`));
        }
        const text = `${uses.get(id)} · ${status.replace(/_/g, " ")}${st?.detail ? ` · ${st.detail}` : ""}`;
        const el = statusText.get(id)!;
        const clipped = clip(text, 26);
        if (el.textContent !== clipped) el.textContent = clipped;
      }
    },
  };
}
