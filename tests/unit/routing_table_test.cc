#include "router/routing_table.h"

#include <algorithm>
#include <atomic>
#include <gtest/gtest.h>
#include <thread>

#include "common/common.h"

namespace ferry::router {
namespace {

TEST(RoutingTableTest, PrefixMatchesAtSegmentBoundaries) {
  EXPECT_TRUE(PrefixMatches("/", "/"));
  EXPECT_TRUE(PrefixMatches("/", "/anything/at/all"));
  EXPECT_TRUE(PrefixMatches("/a", "/a"));
  EXPECT_TRUE(PrefixMatches("/a", "/a/"));
  EXPECT_TRUE(PrefixMatches("/a", "/a/b"));
  EXPECT_FALSE(PrefixMatches("/a", "/ab"));
  EXPECT_FALSE(PrefixMatches("/a/b", "/a"));
  EXPECT_FALSE(PrefixMatches("/a", ""));
}

TEST(RoutingTableTest, LongestPrefixWins) {
  RoutingTable table({{"/", "root", "R", nullptr}, {"/a", "a", "A", nullptr}, {"/a/b", "ab", "AB", nullptr}});
  EXPECT_EQ(table.Match("/a/b/c")->application, "ab");
  EXPECT_EQ(table.Match("/a/b")->application, "ab");
  EXPECT_EQ(table.Match("/a/bc")->application, "a");
  EXPECT_EQ(table.Match("/a")->application, "a");
  EXPECT_EQ(table.Match("/x")->application, "root");
}

TEST(RoutingTableTest, NoMatchWithoutRoot) {
  RoutingTable table({{"/a", "a", "A", nullptr}});
  EXPECT_EQ(table.Match("/b"), nullptr);
  EXPECT_EQ(table.Match("/"), nullptr);
}

TEST(RoutingTableTest, CellPublishesSnapshots) {
  RoutingTableCell cell;
  EXPECT_TRUE(cell.Get()->routes().empty());
  auto old = cell.Get();
  cell.Publish(std::make_shared<const RoutingTable>(std::vector<Route>{{"/a", "a", "A", nullptr}}));
  EXPECT_EQ(cell.Get()->routes().size(), 1u);
  EXPECT_TRUE(old->routes().empty());  // readers keep the snapshot they took
}

TEST(RoutingTableTest, AReaderSeesEachPublishAndKeepsItsTableUntilThen) {
  RoutingTableCell cell;
  RoutingTableCell::Reader reader(&cell);
  const RoutingTable* first = reader.Get().get();
  EXPECT_TRUE(first->routes().empty());
  EXPECT_EQ(reader.Get().get(), first) << "no publish: the same table, not a new copy";
  cell.Publish(std::make_shared<const RoutingTable>(std::vector<Route>{{"/a", "a", "A", nullptr}}));
  ASSERT_EQ(reader.Get()->routes().size(), 1u);
  EXPECT_EQ(reader.Get(), cell.Get());
}

TEST(RoutingTableTest, ReadersOnOtherThreadsFollowPublishes) {
  RoutingTableCell cell;
  std::atomic<bool> done{false};
  std::vector<std::thread> readers;
  std::atomic<size_t> largest_seen{0};
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      RoutingTableCell::Reader reader(&cell);
      while (!done.load()) {
        size_t n = reader.Get()->routes().size();
        if (n > largest_seen.load()) largest_seen.store(n);
      }
      largest_seen.store(std::max(largest_seen.load(), reader.Get()->routes().size()));
    });
  }
  std::vector<Route> routes;
  for (int i = 0; i < 200; ++i) {
    routes.push_back({StrCat("/r", i), "a", "A", nullptr});
    cell.Publish(std::make_shared<const RoutingTable>(routes));
  }
  done.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(largest_seen.load(), 200u);
}

}  // namespace
}  // namespace ferry::router
