"""The sensor's Elasticsearch output: templates, connection settings, spool and writer.

`templates` owns the index templates and data-stream names, `config` how to reach and
authenticate to the cluster, `spool` the bounded on-disk queue that keeps documents while
the cluster can't take them, `writer` the thread that batches, delivers and retries.
See docs/elasticsearch.md.
"""
