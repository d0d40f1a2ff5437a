import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.RetryNTimes;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.ServiceInstanceBuilder;
import org.apache.curator.x.discovery.ServiceProvider;
import org.apache.curator.x.discovery.UriSpec;

/**
 * A real Apache Curator x-discovery peer for zklb's interop tests (tests/integration/test_curator_interop.py).
 *
 * <p>Usage:
 *
 * <pre>
 *   CuratorPeer query    CONNECT SERVICE [PAYLOAD_CLASS]   ServiceDiscovery.queryForInstances
 *   CuratorPeer provider CONNECT SERVICE [PAYLOAD_CLASS]   ServiceProvider.getAllInstances (curator-recipes)
 *   CuratorPeer register CONNECT SERVICE ID ADDRESS PORT [WEIGHT [SSL_PORT]]
 * </pre>
 *
 * <p>{@code query} and {@code provider} print one JSON object per instance (sorted by id) and exit 0;
 * any exception from Curator is printed to stderr and exits 1. PAYLOAD_CLASS is the class given to
 * {@code ServiceDiscoveryBuilder.builder} (default {@code java.util.Map}).
 *
 * <p>{@code register} registers one instance whose payload is a {@code Map} {@code {"metadata":
 * {"weight": WEIGHT}}} (PORT 0 means no plain port), prints {@code READY}, then waits until stdin closes or a
 * line {@code quit} arrives, unregisters, prints {@code BYE} and exits 0.
 *
 * <p>Everything uses basePath {@code /services}, Curator's default JSON serializer and no custom Jackson
 * configuration, exactly as a plain Curator user would.
 */
public final class CuratorPeer {
    private static final String BASE_PATH = "/services";
    private static final ObjectMapper JSON = new ObjectMapper();

    /**
     * A POJO payload shaped like Spring Cloud Zookeeper's {@code ZookeeperInstance} (id, name, metadata),
     * for {@code query CONNECT SERVICE CuratorPeer$PojoPayload}: how a reader with its own payload class
     * treats zklb's untyped payloads.
     */
    public static final class PojoPayload {
        public String id;
        public String name;
        public Map<String, String> metadata = new LinkedHashMap<>();
    }

    private CuratorPeer() {}

    public static void main(String[] args) {
        if (args.length < 3) {
            usage();
        }
        int status;
        try {
            switch (args[0]) {
                case "query":
                    status = query(args, false);
                    break;
                case "provider":
                    status = query(args, true);
                    break;
                case "register":
                    status = register(args);
                    break;
                default:
                    usage();
                    return;
            }
        } catch (Throwable t) {
            System.err.println("CuratorPeer " + args[0] + " failed: " + t);
            t.printStackTrace(System.err);
            status = 1;
        }
        System.out.flush();
        // Curator/ZooKeeper leave non-daemon threads behind on some paths; never hang the test.
        Runtime.getRuntime().halt(status);
    }

    private static void usage() {
        System.err.println(
                "usage: CuratorPeer query|provider CONNECT SERVICE [PAYLOAD_CLASS]\n"
                        + "       CuratorPeer register CONNECT SERVICE ID ADDRESS PORT [WEIGHT [SSL_PORT]]");
        System.exit(2);
    }

    private static CuratorFramework connect(String connect) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(connect, 10_000, 5_000, new RetryNTimes(3, 200));
        client.start();
        if (!client.blockUntilConnected(15, TimeUnit.SECONDS)) {
            client.close();
            throw new IllegalStateException("could not connect to ZooKeeper at " + connect);
        }
        return client;
    }

    @SuppressWarnings({"unchecked", "rawtypes"})
    private static int query(String[] args, boolean viaProvider) throws Exception {
        String service = args[2];
        Class<Object> payloadClass = (Class) Class.forName(args.length > 3 ? args[3] : "java.util.Map");
        try (CuratorFramework client = connect(args[1]);
                ServiceDiscovery<Object> discovery = ServiceDiscoveryBuilder.builder(payloadClass)
                        .client(client)
                        .basePath(BASE_PATH)
                        .build()) {
            discovery.start();
            Collection<ServiceInstance<Object>> found;
            if (viaProvider) {
                try (ServiceProvider<Object> provider =
                        discovery.serviceProviderBuilder().serviceName(service).build()) {
                    provider.start();
                    found = provider.getAllInstances();
                }
            } else {
                found = discovery.queryForInstances(service);
            }
            List<ServiceInstance<Object>> instances = new ArrayList<>(found);
            instances.sort(Comparator.comparing(ServiceInstance::getId));
            for (ServiceInstance<Object> instance : instances) {
                System.out.println(JSON.writeValueAsString(describe(instance)));
            }
        }
        return 0;
    }

    private static Map<String, Object> describe(ServiceInstance<Object> instance) {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("name", instance.getName());
        out.put("id", instance.getId());
        out.put("address", instance.getAddress());
        out.put("port", instance.getPort());
        out.put("sslPort", instance.getSslPort());
        out.put("enabled", instance.isEnabled());
        out.put("serviceType", String.valueOf(instance.getServiceType()));
        out.put("registrationTimeUTC", instance.getRegistrationTimeUTC());
        out.put("uri", instance.getUriSpec() == null ? null : instance.buildUriSpec());
        Object payload = instance.getPayload();
        out.put("payloadClass", payload == null ? null : payload.getClass().getName());
        Object metadata = null;
        if (payload instanceof Map) {
            metadata = ((Map<?, ?>) payload).get("metadata");
        } else if (payload instanceof PojoPayload) {
            metadata = ((PojoPayload) payload).metadata;
        }
        out.put("metadata", metadata);
        return out;
    }

    @SuppressWarnings({"unchecked", "rawtypes"})
    private static int register(String[] args) throws Exception {
        if (args.length < 6) {
            usage();
        }
        String service = args[2];
        int port = Integer.parseInt(args[5]);
        String weight = args.length > 6 ? args[6] : "1";
        int sslPort = args.length > 7 ? Integer.parseInt(args[7]) : 0;

        Map<String, Object> payload = new LinkedHashMap<>();
        Map<String, String> metadata = new LinkedHashMap<>();
        metadata.put("weight", weight);
        payload.put("metadata", metadata);

        ServiceInstanceBuilder<Object> builder = ServiceInstance.builder();
        builder.name(service)
                .id(args[3])
                .address(args[4])
                .payload(payload)
                .uriSpec(new UriSpec("{scheme}://{address}:{port}"));
        if (port > 0) {
            builder.port(port);
        }
        if (sslPort > 0) {
            builder.sslPort(sslPort);
        }
        ServiceInstance<Object> instance = builder.build();

        Class<Object> payloadClass = (Class) Map.class;
        try (CuratorFramework client = connect(args[1]);
                ServiceDiscovery<Object> discovery = ServiceDiscoveryBuilder.builder(payloadClass)
                        .client(client)
                        .basePath(BASE_PATH)
                        .build()) {
            discovery.start();
            discovery.registerService(instance);
            System.out.println("READY");
            System.out.flush();
            BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            String line;
            while ((line = stdin.readLine()) != null) {
                if (line.trim().equals("quit")) {
                    break;
                }
            }
            discovery.unregisterService(instance);
        }
        System.out.println("BYE");
        return 0;
    }
}
