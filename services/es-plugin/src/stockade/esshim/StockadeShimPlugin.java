/*
 * Stockade dev/test shim for the Elasticsearch "integ-test-zip" distribution.
 *
 * The integ-test-zip published on Maven Central is a real Elasticsearch
 * server, but it ships only the modules transport-netty4, x-pack-core,
 * x-pack-security and apm. Data streams themselves (templates with
 * data_stream: {}, auto-creation on `create`, rollover, backing indices)
 * live in the server jar and work as-is; what lives in the missing
 * `data-streams` and `rest-root` modules are a few REST endpoints. This
 * plugin adds the ones our tests and tools need, built only on public
 * server APIs:
 *
 *   GET    /                        cluster info (name, cluster_uuid, version)
 *   GET    /_data_stream[/{name}]   list data streams (wildcards allowed)
 *   DELETE /_data_stream/{name}     delete data streams and their backing indices
 *
 * and, from the missing `analysis-common` module, the analysis components the
 * security system index (.security: native users, API keys) needs when
 * security is on: tokenizer uax_url_email, token filters pattern_capture,
 * lowercase and unique (the last one approximated with Lucene's
 * RemoveDuplicatesTokenFilter, i.e. duplicates at the same position).
 *
 * It is compiled against the pinned server jar by services/install.
 */
package stockade.esshim;

import org.elasticsearch.Build;
import org.elasticsearch.client.internal.node.NodeClient;
import org.elasticsearch.cluster.ClusterState;
import org.elasticsearch.cluster.ClusterStateUpdateTask;
import org.elasticsearch.cluster.ProjectState;
import org.elasticsearch.cluster.metadata.DataStream;
import org.elasticsearch.cluster.metadata.MetadataDataStreamsService;
import org.elasticsearch.cluster.node.DiscoveryNodes;
import org.elasticsearch.cluster.service.ClusterService;
import org.elasticsearch.common.Priority;
import org.elasticsearch.common.regex.Regex;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.features.NodeFeature;
import org.elasticsearch.index.Index;
import org.apache.lucene.analysis.LowerCaseFilter;
import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.email.UAX29URLEmailTokenizer;
import org.apache.lucene.analysis.miscellaneous.RemoveDuplicatesTokenFilter;
import org.apache.lucene.analysis.pattern.PatternCaptureGroupTokenFilter;
import org.elasticsearch.index.analysis.AbstractTokenFilterFactory;
import org.elasticsearch.index.analysis.TokenFilterFactory;
import org.elasticsearch.index.analysis.TokenizerFactory;
import org.elasticsearch.indices.analysis.AnalysisModule.AnalysisProvider;
import org.elasticsearch.plugins.ActionPlugin;
import org.elasticsearch.plugins.AnalysisPlugin;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.rest.BaseRestHandler;
import org.elasticsearch.rest.RestChannel;
import org.elasticsearch.rest.RestHandler;
import org.elasticsearch.rest.RestRequest;
import org.elasticsearch.rest.RestResponse;
import org.elasticsearch.rest.RestStatus;
import org.elasticsearch.xcontent.XContentBuilder;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.function.Predicate;
import java.util.function.Supplier;
import java.util.regex.Pattern;

@SuppressWarnings("removal") // ClusterState.projectState(): fine for a single-project dev node
public class StockadeShimPlugin extends Plugin implements ActionPlugin, AnalysisPlugin {
    private volatile ClusterService clusterService;
    private volatile Settings settings = Settings.EMPTY;

    @Override
    public Collection<?> createComponents(PluginServices services) {
        this.clusterService = services.clusterService();
        this.settings = services.environment().settings();
        return List.of();
    }

    @Override
    public Collection<RestHandler> getRestHandlers(
        RestHandlersServices services,
        Supplier<DiscoveryNodes> nodesInCluster,
        Predicate<NodeFeature> clusterSupportsFeature
    ) {
        return List.of(new RootHandler(), new GetDataStreamHandler(), new DeleteDataStreamHandler());
    }

    @Override
    public Map<String, AnalysisProvider<TokenizerFactory>> getTokenizers() {
        return Map.of("uax_url_email", (indexSettings, env, name, settings) -> TokenizerFactory.newFactory(name, UAX29URLEmailTokenizer::new));
    }

    @Override
    public Map<String, AnalysisProvider<TokenFilterFactory>> getTokenFilters() {
        return Map.of(
            "pattern_capture",
            (indexSettings, env, name, settings) -> {
                List<String> regexes = settings.getAsList("patterns", List.of(), false);
                Pattern[] patterns = new Pattern[regexes.size()];
                for (int i = 0; i < patterns.length; i++) {
                    patterns[i] = Pattern.compile(regexes.get(i));
                }
                boolean preserveOriginal = settings.getAsBoolean("preserve_original", true);
                return new AbstractTokenFilterFactory(name) {
                    @Override
                    public TokenStream create(TokenStream in) {
                        return new PatternCaptureGroupTokenFilter(in, preserveOriginal, patterns);
                    }
                };
            },
            "lowercase",
            (indexSettings, env, name, settings) -> new AbstractTokenFilterFactory(name) {
                @Override
                public TokenStream create(TokenStream in) {
                    return new LowerCaseFilter(in);
                }
            },
            "unique",
            (indexSettings, env, name, settings) -> new AbstractTokenFilterFactory(name) {
                @Override
                public TokenStream create(TokenStream in) {
                    return new RemoveDuplicatesTokenFilter(in);
                }
            }
        );
    }

    private static String[] names(RestRequest request) {
        String raw = request.param("name");
        if (raw == null || raw.isEmpty() || raw.equals("_all")) {
            return new String[] { "*" };
        }
        return raw.split(",");
    }

    private static Map<String, DataStream> matching(ClusterState state, String[] patterns) {
        Map<String, DataStream> out = new TreeMap<>();
        for (Map.Entry<String, DataStream> e : state.projectState().metadata().dataStreams().entrySet()) {
            for (String p : patterns) {
                if (Regex.simpleMatch(p, e.getKey())) {
                    out.put(e.getKey(), e.getValue());
                }
            }
        }
        return out;
    }

    private static void sendError(RestChannel channel, RestStatus status, String type, String reason) {
        try {
            XContentBuilder b = channel.newErrorBuilder();
            b.startObject();
            b.startObject("error").field("type", type).field("reason", reason).endObject();
            b.field("status", status.getStatus());
            b.endObject();
            channel.sendResponse(new RestResponse(status, b));
        } catch (IOException e) {
            channel.sendResponse(new RestResponse(RestStatus.INTERNAL_SERVER_ERROR, e.toString()));
        }
    }

    private final class RootHandler extends BaseRestHandler {
        @Override
        public String getName() {
            return "stockade_root";
        }

        @Override
        public List<Route> routes() {
            return List.of(new Route(RestRequest.Method.GET, "/"), new Route(RestRequest.Method.HEAD, "/"));
        }

        @Override
        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            return channel -> {
                ClusterState state = clusterService.state();
                Build build = Build.current();
                XContentBuilder b = channel.newBuilder();
                b.startObject();
                b.field("name", clusterService.localNode().getName());
                b.field("cluster_name", state.getClusterName().value());
                b.field("cluster_uuid", state.metadata().clusterUUID());
                b.startObject("version");
                b.field("number", build.qualifiedVersion());
                b.field("build_flavor", build.flavor());
                b.field("build_type", build.type().displayName());
                b.field("build_hash", build.hash());
                b.field("build_date", build.date());
                b.field("build_snapshot", build.isSnapshot());
                b.field("minimum_wire_compatibility_version", build.minWireCompatVersion());
                b.field("minimum_index_compatibility_version", build.minIndexCompatVersion());
                b.endObject();
                b.field("tagline", "You Know, for Search");
                b.endObject();
                channel.sendResponse(new RestResponse(RestStatus.OK, b));
            };
        }
    }

    private final class GetDataStreamHandler extends BaseRestHandler {
        @Override
        public String getName() {
            return "stockade_get_data_stream";
        }

        @Override
        public List<Route> routes() {
            return List.of(new Route(RestRequest.Method.GET, "/_data_stream"), new Route(RestRequest.Method.GET, "/_data_stream/{name}"));
        }

        @Override
        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            String[] patterns = names(request);
            return channel -> {
                Map<String, DataStream> found = matching(clusterService.state(), patterns);
                boolean wildcard = false;
                for (String p : patterns) {
                    wildcard |= Regex.isSimpleMatchPattern(p);
                }
                if (found.isEmpty() && wildcard == false) {
                    sendError(channel, RestStatus.NOT_FOUND, "index_not_found_exception", "no such index [" + String.join(",", patterns) + "]");
                    return;
                }
                XContentBuilder b = channel.newBuilder();
                b.startObject().startArray("data_streams");
                for (DataStream ds : found.values()) {
                    b.startObject();
                    b.field("name", ds.getName());
                    b.startObject("timestamp_field").field("name", "@timestamp").endObject();
                    b.startArray("indices");
                    for (Index i : ds.getIndices()) {
                        b.startObject().field("index_name", i.getName()).field("index_uuid", i.getUUID()).endObject();
                    }
                    b.endArray();
                    b.field("generation", ds.getGeneration());
                    b.endObject();
                }
                b.endArray().endObject();
                channel.sendResponse(new RestResponse(RestStatus.OK, b));
            };
        }
    }

    private final class DeleteDataStreamHandler extends BaseRestHandler {
        @Override
        public String getName() {
            return "stockade_delete_data_stream";
        }

        @Override
        public List<Route> routes() {
            return List.of(new Route(RestRequest.Method.DELETE, "/_data_stream/{name}"));
        }

        @Override
        protected RestChannelConsumer prepareRequest(RestRequest request, NodeClient client) {
            String[] patterns = names(request);
            return channel -> clusterService.submitUnbatchedStateUpdateTask(
                "stockade-delete-data-stream " + String.join(",", patterns),
                new ClusterStateUpdateTask(Priority.HIGH) {
                    private final List<String> deleted = new ArrayList<>();

                    @Override
                    public ClusterState execute(ClusterState current) {
                        Map<String, DataStream> found = matching(current, patterns);
                        boolean wildcard = false;
                        for (String p : patterns) {
                            wildcard |= Regex.isSimpleMatchPattern(p);
                        }
                        if (found.isEmpty()) {
                            if (wildcard) {
                                return current;
                            }
                            throw new IllegalArgumentException("no such data stream [" + String.join(",", patterns) + "]");
                        }
                        deleted.clear();
                        deleted.addAll(found.keySet());
                        ProjectState ps = current.projectState();
                        Set<DataStream> toDelete = new LinkedHashSet<>(found.values());
                        return MetadataDataStreamsService.deleteDataStreams(ps, toDelete, settings);
                    }

                    @Override
                    public void onFailure(Exception e) {
                        boolean missing = e instanceof IllegalArgumentException;
                        sendError(
                            channel,
                            missing ? RestStatus.NOT_FOUND : RestStatus.INTERNAL_SERVER_ERROR,
                            missing ? "index_not_found_exception" : "exception",
                            String.valueOf(e.getMessage())
                        );
                    }

                    @Override
                    public void clusterStateProcessed(ClusterState oldState, ClusterState newState) {
                        channel.sendResponse(new RestResponse(RestStatus.OK, "application/json", "{\"acknowledged\":true}"));
                    }
                }
            );
        }
    }
}
