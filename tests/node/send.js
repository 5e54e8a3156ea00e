// A non-Python OTLP sender: the OpenTelemetry JS SDK exporting OTLP/JSON over HTTP, or
// OTLP/gRPC with PROTOCOL "grpc" (its gRPC exporters, on @grpc/grpc-js).
// Usage: node send.js BASE_URL COUNT [PROTOCOL]  (sends COUNT tagged server spans, each with a
// tagged event, and COUNT tagged log records; then flushes and prints "sent").
"use strict";
const { SpanKind } = require("@opentelemetry/api");
const { TracerProvider, SimpleSpanProcessor } = require("@opentelemetry/sdk-trace");
const { LoggerProvider, SimpleLogRecordProcessor } = require("@opentelemetry/sdk-logs");
const { OTLPTraceExporter } = require("@opentelemetry/exporter-trace-otlp-http");
const { OTLPLogExporter } = require("@opentelemetry/exporter-logs-otlp-http");
const { resourceFromAttributes } = require("@opentelemetry/resources");

const [base, countArg, protocol] = process.argv.slice(2);
const count = Number(countArg || "3");
const resource = resourceFromAttributes({
  "service.name": "node-shop",
  "service.version": "7.1.0",
  "deployment.environment.name": "staging",
});
const headers = process.env.BRIDGE_TOKEN ? { Authorization: `Bearer ${process.env.BRIDGE_TOKEN}` } : {};

function exporters() {
  if (protocol !== "grpc") {
    return [
      new OTLPTraceExporter({ url: `${base}/v1/traces`, headers }),
      new OTLPLogExporter({ url: `${base}/v1/logs`, headers }),
    ];
  }
  const { Metadata } = require("@grpc/grpc-js");
  const { OTLPTraceExporter: GrpcTraceExporter } = require("@opentelemetry/exporter-trace-otlp-grpc");
  const { OTLPLogExporter: GrpcLogExporter } = require("@opentelemetry/exporter-logs-otlp-grpc");
  const metadata = () => {
    const m = new Metadata();
    if (headers.Authorization) m.set("authorization", headers.Authorization);
    return m;
  };
  return [
    new GrpcTraceExporter({ url: base, metadata: metadata() }),
    new GrpcLogExporter({ url: base, metadata: metadata() }),
  ];
}

async function main() {
  const [traceExporter, logExporter] = exporters();
  const tracerProvider = new TracerProvider({
    resource,
    spanProcessors: [new SimpleSpanProcessor({ exporter: traceExporter })],
  });
  const loggerProvider = new LoggerProvider({
    resource,
    processors: [new SimpleLogRecordProcessor({ exporter: logExporter })],
  });
  const tracer = tracerProvider.getTracer("node-sender", "1.0.0");
  const logger = loggerProvider.getLogger("node-sender");
  const t0 = Date.UTC(2023, 0, 1, 12, 0, 0);
  for (let seq = 0; seq < count; seq++) {
    const span = tracer.startSpan("POST /checkout", {
      kind: SpanKind.SERVER,
      startTime: t0 + seq * 1000,
      attributes: {
        "analytics.event": "Checkout Completed",
        "user.id": `node-user-${seq}`,
        "user.email": `n${seq}@example.com`,
        "url.full": "https://shop.example.com/checkout",
        "client.address": "198.51.100.7",
        seq: seq,
        total: 12.5 + seq,
        paid: true,
        big: 9007199254740993n.toString(),
        items: ["book", "pen"],
        quantities: [1, 2],
      },
    });
    span.addEvent("coupon applied", { "analytics.event": true, code: `SAVE${seq}` }, t0 + seq * 1000 + 5);
    span.end(t0 + seq * 1000 + 20);
    logger.emit({
      eventName: "cart.abandoned",
      timestamp: t0 + seq * 1000 + 30,
      body: { cart_id: `c-${seq}`, lines: [1, 2, 3], meta: { gift: false } },
      attributes: { "analytics.event": true, "user.id": `node-user-${seq}`, channel: "web" },
    });
  }
  await tracerProvider.forceFlush();
  await loggerProvider.forceFlush();
  await tracerProvider.shutdown();
  await loggerProvider.shutdown();
  console.log("sent");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
