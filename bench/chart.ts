/** A grouped horizontal bar chart as SVG text: each group scaled to its own maximum. */
export interface ChartGroup {
  label: string;
  bars: { name: string; value: number }[];
}

const escapeXml = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/**
 * Renders the groups one under the other; bar lengths are relative within a group.
 *
 * @example
 * writeFileSync("docs/bench.svg", renderChart({ title: "t", groups: [{ label: "g", bars: [{ name: "a", value: 1 }] }] }));
 */
export function renderChart({ title, groups }: { title: string; groups: ChartGroup[] }): string {
  const width = 760;
  const left = 200;
  const barH = 18;
  const colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"];
  let y = 40;
  const parts: string[] = [`<text x="10" y="24" font-size="16" font-weight="bold">${escapeXml(title)}</text>`];
  for (const g of groups) {
    parts.push(`<text x="10" y="${y + 14}" font-size="13" font-weight="bold">${escapeXml(g.label)}</text>`);
    y += 22;
    const max = Math.max(...g.bars.map((b) => b.value), 1e-9);
    g.bars.forEach((b, i) => {
      const w = Math.max(1, ((width - left - 90) * b.value) / max);
      parts.push(
        `<text x="${left - 8}" y="${y + 13}" font-size="12" text-anchor="end">${escapeXml(b.name)}</text>`,
        `<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${colors[i % colors.length]}"/>`,
        `<text x="${left + w + 6}" y="${y + 13}" font-size="12">${b.value >= 100 ? b.value.toFixed(0) : b.value.toFixed(1)}</text>`,
      );
      y += barH + 4;
    });
    y += 12;
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y + 10}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join("\n")}\n</svg>\n`;
}
