// Admin calls for localstack/kafka-broker that Kafka's own CLI tools do not do in one JVM:
// waiting until a broker is unfenced, and upserting SCRAM credentials with the password from the
// environment (never argv). Compiled by `kafka-broker install` against the cached Kafka jars.
//
//   java -cp LIBS/*:CLASSES BrokerAdmin wait HOST:PORT TIMEOUT_SECS
//   DAMSELFLY_SCRAM_PASSWORD=... java -cp ... BrokerAdmin add-scram-user HOST:PORT USER
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;

public final class BrokerAdmin {
  private static final int SCRAM_ITERATIONS = 8192;

  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      die("usage: BrokerAdmin wait HOST:PORT TIMEOUT_SECS | add-scram-user HOST:PORT USER");
    }
    switch (args[0]) {
      case "wait" -> System.exit(waitReady(args[1], Long.parseLong(args[2])));
      case "add-scram-user" -> addScramUser(args[1], args[2]);
      default -> die("unknown command " + args[0]);
    }
  }

  private static Admin admin(String bootstrap, int requestTimeoutMs) {
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(AdminClientConfig.CLIENT_ID_CONFIG, "damselfly-kafka-broker");
    p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, requestTimeoutMs);
    p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, requestTimeoutMs);
    p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, 100);
    p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);
    p.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, 100);
    p.put(AdminClientConfig.RETRY_BACKOFF_MAX_MS_CONFIG, 500);
    return Admin.create(p);
  }

  // Ready = the broker lists itself in a metadata answer: KRaft brokers leave fenced brokers out of
  // metadata, and a broker is unfenced only after log recovery and catching up with the controller.
  private static int waitReady(String bootstrap, long timeoutSecs) throws InterruptedException {
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutSecs);
    String last = "no answer";
    try (Admin a = admin(bootstrap, 2000)) {
      while (System.nanoTime() < deadline) {
        long leftMs = Math.max(1, TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime()));
        try {
          var nodes = a.describeCluster(new DescribeClusterOptions().timeoutMs((int) Math.min(2000, leftMs)))
              .nodes().get(leftMs + 500, TimeUnit.MILLISECONDS);
          if (!nodes.isEmpty()) {
            return 0;
          }
          last = "the broker answers but lists no unfenced broker yet";
        } catch (Exception e) {
          last = rootMessage(e);
        }
        Thread.sleep(200);
      }
    }
    System.err.println("kafka broker at " + bootstrap + " not ready after " + timeoutSecs + "s (" + last + ")");
    return 1;
  }

  private static void addScramUser(String bootstrap, String user) throws Exception {
    String password = System.getenv("DAMSELFLY_SCRAM_PASSWORD");
    if (password == null || password.isEmpty()) {
      die("DAMSELFLY_SCRAM_PASSWORD is not set");
    }
    // An upsert: running it again just writes the same password with a new salt. One request may
    // not alter the same user twice, so one request per mechanism.
    try (Admin a = admin(bootstrap, 30000)) {
      for (ScramMechanism m : List.of(ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)) {
        a.alterUserScramCredentials(List.of(
            new UserScramCredentialUpsertion(user, new ScramCredentialInfo(m, SCRAM_ITERATIONS), password)))
            .all().get(60, TimeUnit.SECONDS);
      }
    } catch (Exception e) {
      die("could not set the SCRAM credentials of " + user + " on " + bootstrap + ": " + rootMessage(e));
    }
  }

  private static String rootMessage(Throwable e) {
    while (e.getCause() != null) {
      e = e.getCause();
    }
    return e.getClass().getSimpleName() + ": " + e.getMessage();
  }

  private static void die(String msg) {
    System.err.println(msg);
    System.exit(2);
  }
}
